"""Fault injection: the service's topology as separate processes, faults an operator's bad day brings, no human.

The topology runs under the run command's own supervisor (jobsite.supervisor): gunicorn, two job workers,
one callbacks worker and cron, on a redis-server of this module's own (CI's shared Redis is never touched),
reached through a TCP proxy the test controls, as is PostgreSQL (CI's server is never restarted: the proxy
cuts the connections). Each round submits N async jobs with webhooks to a signed-webhook receiver on
127.0.0.1, injects one fault, recovers, and asserts: every accepted job final within a bound after recovery,
none lost, one job per Idempotency-Key, one charge per job, every webhook delivered and recorded once, no 500.
The figures of each round (time to recover, re-runs, duplicate deliveries) are printed and written to
var/tests-postgresql/faults-report.json.
"""

import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import redis
from django.db import connection
from rq import Worker
from standardwebhooks import Webhook

from accounts.models import User
from bench.stack import gunicorn_command
from credits.models import EntryType, LedgerEntry
from jobs.models import CallbackAttempt, CallbackStatus, IdempotencyRecord, Job, JobStatus, KindSettings
from jobs.webhooks import webhook_secret_rotate
from jobsite.supervisor import Supervisor
from tests.conftest import ROOT, TEST_VAR, LocalHTTPServer, auth_headers, respond, subprocess_env
from tests.processes import RedisServer, free_port, group_alive
from tests.waiting import wait_until

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="fault rounds need a database reached over TCP (the connection-cut round proxies it) and many "
        "concurrent writers: SQLite's single file lock would measure lock contention, not recovery",
    ),
]


@pytest.fixture(autouse=True, scope="module")
def _quiet_httpx() -> Iterator[None]:
    """Hundreds of request lines per round say nothing; restored after, so other modules' log tests see them."""
    httpx_logger = logging.getLogger("httpx")
    level = httpx_logger.level
    httpx_logger.setLevel(logging.WARNING)
    yield
    httpx_logger.setLevel(level)


N = int(os.environ.get("FAULTS_N", "30"))
"""Async jobs per round."""

SETTLE_BOUND = 120.0
"""Seconds after recovery within which every accepted job must be final and its webhook delivered. The slowest
path: a delivery cut mid-flight (its worker killed, or its Redis gone) is closed `interrupted` once it is
CALLBACK_TOTAL_TIMEOUT + CALLBACK_INTERRUPT_MARGIN (25 s) old plus a reconciler tick, and the retry it schedules
can wait for RQ's scheduler lock on `callbacks` (61 s) when a dead worker's scheduler held it."""

HASH_ITERATIONS = 150_000
"""Work per job: long enough (~0.1-0.3 s) that a fault lands while jobs run."""

REPORT = TEST_VAR / "faults-report.json"

TOPOLOGY_ENV = {
    "RECONCILE_INTERVAL": "2",
    "RECONCILE_QUEUED_GRACE": "3",
    "RECONCILE_RUNNING_GRACE": "3",
    "CALLBACK_RECONCILE_GRACE": "5",
    "IDEMPOTENCY_LOCK_TIMEOUT": "5",
    "SERVICE_UNAVAILABLE_RETRY_AFTER": "1",
    "LOG_LEVEL": "WARNING",
}
"""Short reconciler periods and graces so that rounds settle in seconds; the mechanisms are the production ones."""


class TcpProxy:
    """A TCP relay on 127.0.0.1 to a target port, which the test cuts (every connection dropped, new ones
    closed at once) and restores. Hand-written: a few dozen lines of sockets beat a toxiproxy binary in CI."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = True
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            with self._lock:
                self._sockets.discard(sock)

    def cut(self) -> None:
        self.up = False
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


@dataclass
class Topology:
    url: str
    redis_server: RedisServer
    redis_proxy: TcpProxy
    db_proxy: TcpProxy
    supervisor: Supervisor

    @property
    def redis(self) -> redis.Redis:
        return self.redis_server.client()

    def pid(self, name: str) -> int:
        return self.supervisor.children[name].process.pid

    def all_running(self) -> bool:
        return all(c.process.poll() is None and c.restart_at is None for c in self.supervisor.children.values())

    def healthy(self) -> bool:
        try:
            body = httpx.get(f"{self.url}/healthz", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return False
        return self.all_running() and body.get("database_ok") and body.get("redis_ok") and body["active_workers"] >= 3

    def kill(self, name: str, *, group: bool = False) -> int:
        """SIGKILL a child (or its whole process group) and wait until the supervisor has restarted it."""
        child = self.supervisor.children[name]
        pid, restarts = child.process.pid, child.restarts
        os.killpg(pid, signal.SIGKILL) if group else os.kill(pid, signal.SIGKILL)
        wait_until(lambda: child.restarts > restarts, timeout=30)
        return pid

    def restarts(self) -> dict[str, int]:
        return {name: child.restarts for name, child in self.supervisor.children.items()}


def _database_url(port: int) -> str:
    url = urlsplit(subprocess_env()["DATABASE_URL"])
    return urlunsplit(url._replace(netloc=f"{url.username or 'postgres'}@127.0.0.1:{port}"))


@pytest.fixture(scope="module")
def topology(django_db_setup: None, django_db_blocker: Any) -> Iterator[Topology]:
    redis_server = RedisServer()
    redis_proxy = TcpProxy(redis_server.port)
    db_proxy = TcpProxy(int(connection.settings_dict.get("PORT") or 5432))
    port = free_port()
    env = subprocess_env(
        REDIS_URL=f"redis://127.0.0.1:{redis_proxy.port}/0", DATABASE_URL=_database_url(db_proxy.port), **TOPOLOGY_ENV
    )
    python = sys.executable
    worker = ["manage.py", "rqworker", "--worker-class", "jobs.worker.ResilientWorker", "--with-scheduler"]
    commands = {
        "web": [*gunicorn_command(port, workers=2, threads=4), "--timeout", "60"],
        "jobs-worker-1": [python, *worker, "jobs", "maintenance"],
        "jobs-worker-2": [python, *worker, "jobs", "maintenance"],
        "callbacks-worker-1": [python, *worker, "callbacks"],
        "cron": [python, "manage.py", "cron"],
    }
    logs = []
    lines: list[str] = []
    supervisor = Supervisor(log=lines.append)
    for name, argv in commands.items():
        log = open(TEST_VAR / f"faults-{name}.log", "w")  # noqa: SIM115 - closed below
        logs.append(log)
        supervisor.add(name, argv, cwd=ROOT, env=env, stdout=log)
    supervisor.start()
    stop = threading.Event()
    thread = threading.Thread(target=supervisor.run, args=(stop,), daemon=True)
    thread.start()
    topo = Topology(f"http://127.0.0.1:{port}", redis_server, redis_proxy, db_proxy, supervisor)
    try:
        wait_until(topo.healthy, timeout=60, interval=0.5)
        yield topo
    finally:
        stop.set()
        thread.join()
        supervisor.stop_all()
        for log in logs:
            log.close()
        (TEST_VAR / "faults-supervisor.log").write_text("\n".join(lines) + "\n")
        redis_proxy.close()
        db_proxy.close()
        redis_server.kill()


@dataclass
class Receiver:
    """A webhook receiver that verifies every signature and records (job id, webhook-id) per delivery."""

    secret: str
    delay: float = 0.0
    deliveries: list[tuple[str, str]] = field(default_factory=list)
    bad_signatures: int = 0

    def __call__(self, request: BaseHTTPRequestHandler) -> None:
        time.sleep(self.delay)
        signature = request.headers.get("webhook-signature")
        sent = [entry for entry in self.server.requests if entry["headers"].get("webhook-signature") == signature]
        body = sent[-1]["body"] if sent else b""
        try:
            payload = Webhook(self.secret).verify(body, dict(request.headers))
        except Exception:  # any verification failure counts as a bad signature
            self.bad_signatures += 1
            respond(request, 400)
            return
        self.deliveries.append((payload["id"], request.headers["webhook-id"]))
        respond(request, 200)

    server: LocalHTTPServer | None = None


@dataclass
class Submissions:
    job_ids: dict[str, str] = field(default_factory=dict)
    statuses: Counter = field(default_factory=Counter)
    connection_errors: int = 0


def _submit(url: str, headers: dict[str, str], key: str, body: dict[str, Any], out: Submissions) -> None:
    """Post until accepted, as a careful client does: same Idempotency-Key, honouring Retry-After."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            response = httpx.post(
                f"{url}/api/v1/jobs/async/", json=body, headers={**headers, "Idempotency-Key": key}, timeout=30
            )
        except httpx.HTTPError:
            out.connection_errors += 1
            time.sleep(0.3)
            continue
        out.statuses[response.status_code] += 1
        if response.status_code == 202:
            out.job_ids[key] = response.json()["id"]
            return
        if response.status_code not in (409, 429, 503):
            return  # a status no retry can change: the assertions below report it
        time.sleep(min(2.0, float(response.headers.get("Retry-After", "1"))))


@dataclass
class Round:
    name: str
    user: User
    headers: dict[str, str]
    receiver: Receiver
    submissions: Submissions = field(default_factory=Submissions)
    thread: threading.Thread | None = None

    def submit(self, url: str, *, concurrency: int = 6) -> None:
        def run() -> None:
            with ThreadPoolExecutor(concurrency) as pool:
                for i in range(N):
                    body = {
                        "kind": "hash",
                        "input": {"data": f"{self.name}-{i}", "iterations": HASH_ITERATIONS},
                        "callback_url": f"{self.receiver.server.url}/hook",
                    }
                    pool.submit(_submit, url, self.headers, f"{self.name}-{i}", body, self.submissions)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def jobs(self) -> Any:
        return Job.objects.filter(owner=self.user)


@pytest.fixture
def start_round(
    topology: Topology, make_user: Callable[..., User], http_server: Callable[..., LocalHTTPServer]
) -> Callable[..., Round]:
    def start(name: str, *, receiver_delay: float = 0.0) -> Round:
        wait_until(topology.healthy, timeout=60, interval=0.5)  # the previous round left a working service
        KindSettings.objects.update_or_create(kind="hash", defaults={"time_limit": 10, "retries": 0, "cost": 1})
        user = make_user(f"faults-{name}")
        receiver = Receiver(secret=webhook_secret_rotate(user=user), delay=receiver_delay)
        receiver.server = http_server(receiver)
        round_ = Round(name, user, auth_headers(user), receiver)
        round_.submit(topology.url)
        return round_

    return start


def _settled(round_: Round) -> bool:
    if round_.thread.is_alive():
        return False
    jobs = round_.jobs()
    return (
        not jobs.exclude(status=JobStatus.SUCCEEDED).exists()
        and not jobs.exclude(callback_status=CallbackStatus.DELIVERED).exists()
    )


def _finish(round_: Round, topology: Topology, *, recovered_at: float, restarts_before: dict[str, int]) -> dict:
    """Wait for the round to settle, assert the contract, return its figures."""
    try:
        wait_until(lambda: _settled(round_), timeout=SETTLE_BOUND, interval=0.25)
    except AssertionError:  # name what did not settle
        unsettled = round_.jobs().exclude(status=JobStatus.SUCCEEDED, callback_status=CallbackStatus.DELIVERED)
        left = list(unsettled.values_list("id", "status", "callback_status", "attempts"))
        raise AssertionError(f"round {round_.name} unsettled after {SETTLE_BOUND} s: {left}") from None
    recovery = time.monotonic() - recovered_at
    subs = round_.submissions
    jobs = list(round_.jobs())
    ids = {str(job.id) for job in jobs}
    delivered = Counter(job_id for job_id, _ in round_.receiver.deliveries)
    attempts_ok = Counter(
        str(job_id)
        for job_id in CallbackAttempt.objects.filter(job__in=jobs, status_code=200).values_list("job_id", flat=True)
    )
    charges = Counter(
        str(job_id)
        for job_id in LedgerEntry.objects.filter(job_id__in=ids, type=EntryType.CHARGE).values_list("job_id", flat=True)
    )
    figures = {
        "fault": round_.name,
        "jobs": len(jobs),
        "recover_s": round(recovery, 1),
        "reruns": sum(job.attempts for job in jobs) - len(jobs),
        "lost_attempts_logged": sum(1 for job in jobs for entry in job.attempt_log if entry["code"] == "worker_lost"),
        "duplicate_webhooks": sum(delivered.values()) - len(delivered),
        "http_statuses": dict(subs.statuses),
        "connection_errors": subs.connection_errors,
        "process_restarts": {
            name: count - restarts_before[name]
            for name, count in topology.restarts().items()
            if count > restarts_before[name]
        },
    }
    print(f"\nfault round {json.dumps(figures)}")
    report = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    REPORT.write_text(json.dumps({**report, round_.name: figures}, indent=1))

    assert subs.statuses[500] == 0, figures
    assert set(subs.statuses) <= {202, 409, 429, 503}, figures
    assert len(subs.job_ids) == N, f"only {len(subs.job_ids)} of {N} submissions were accepted: {figures}"
    assert ids == set(subs.job_ids.values()), "one job per Idempotency-Key, and every 202 names a job that exists"
    assert IdempotencyRecord.objects.filter(owner=round_.user, job__isnull=False).count() == N
    assert all(job.status == JobStatus.SUCCEEDED for job in jobs)
    assert charges == Counter(dict.fromkeys(ids, 1)), "exactly one charge per job"
    assert not LedgerEntry.objects.filter(job_id__in=ids, type=EntryType.REFUND).exists()
    assert set(delivered) == ids, "every job's webhook reached the receiver"
    assert round_.receiver.bad_signatures == 0
    assert attempts_ok == Counter(dict.fromkeys(ids, 1)), "one delivered record per job"
    assert recovery < SETTLE_BOUND, figures
    return figures


def _when_jobs_run(round_: Round, count: int = 1) -> None:
    wait_until(lambda: round_.jobs().filter(status=JobStatus.RUNNING).count() >= count, timeout=60, interval=0.02)


def _busy_worker_pids(topology: Topology) -> list[int]:
    return [w.pid for w in Worker.all(connection=topology.redis) if w.get_current_job_id() and w.pid]


def test_job_worker_sigkilled_mid_run(topology: Topology, start_round: Callable[..., Round]) -> None:
    before = topology.restarts()
    round_ = start_round("worker-kill")
    killed_groups = []
    for _ in range(2):
        _when_jobs_run(round_)
        workers = {topology.pid(name): name for name in ("jobs-worker-1", "jobs-worker-2")}
        busy = [workers[pid] for pid in _busy_worker_pids(topology) if pid in workers]
        # The worker alone: its scheduler child is left for the supervisor to end.
        killed_groups.append(topology.kill(busy[0] if busy else "jobs-worker-1"))
    figures = _finish(round_, topology, recovered_at=time.monotonic(), restarts_before=before)
    assert sum(figures["process_restarts"].values()) >= 2
    assert not [group for group in killed_groups if group_alive(group)], "a killed worker's children outlived it"


def test_redis_flushall_mid_run(topology: Topology, start_round: Callable[..., Round]) -> None:
    before = topology.restarts()
    round_ = start_round("flushall")
    _when_jobs_run(round_)
    topology.redis.flushall()
    _finish(round_, topology, recovered_at=time.monotonic(), restarts_before=before)


def test_redis_down_for_ten_seconds(topology: Topology, start_round: Callable[..., Round]) -> None:
    before = topology.restarts()
    round_ = start_round("redis-down")
    _when_jobs_run(round_)
    topology.redis_proxy.cut()
    time.sleep(10)  # the fault's length is the point of this round
    topology.redis_proxy.restore()
    figures = _finish(round_, topology, recovered_at=time.monotonic(), restarts_before=before)
    # Workers and cron waited and reconnected: nothing had to be restarted.
    assert not {name for name in figures["process_restarts"] if name != "web"}, figures


def test_redis_restart_with_data_loss(topology: Topology, start_round: Callable[..., Round]) -> None:
    before = topology.restarts()
    round_ = start_round("redis-restart")
    _when_jobs_run(round_)
    topology.redis_server.kill()
    time.sleep(2)
    topology.redis_server.start()
    figures = _finish(round_, topology, recovered_at=time.monotonic(), restarts_before=before)
    assert not {name for name in figures["process_restarts"] if name != "web"}, figures


def test_cron_killed(topology: Topology, start_round: Callable[..., Round]) -> None:
    """The reconciler is needed (the queue is flushed) right when cron is killed: its restart must do the work."""
    before = topology.restarts()
    round_ = start_round("cron-kill")
    _when_jobs_run(round_)
    topology.kill("cron")
    topology.redis.flushall()
    figures = _finish(round_, topology, recovered_at=time.monotonic(), restarts_before=before)
    assert figures["process_restarts"].get("cron", 0) >= 1


def test_callbacks_worker_sigkilled_mid_delivery(topology: Topology, start_round: Callable[..., Round]) -> None:
    before = topology.restarts()
    round_ = start_round("callbacks-kill", receiver_delay=0.5)
    wait_until(lambda: len(round_.receiver.server.requests) >= 2, timeout=60, interval=0.02)
    topology.kill("callbacks-worker-1")
    _finish(round_, topology, recovered_at=time.monotonic(), restarts_before=before)


def test_gunicorn_sigkilled_during_idempotent_requests(topology: Topology, start_round: Callable[..., Round]) -> None:
    before = topology.restarts()
    round_ = start_round("web-kill")
    wait_until(lambda: round_.jobs().count() >= N // 3, timeout=60, interval=0.01)
    topology.kill("web", group=True)  # master and workers, mid-request
    figures = _finish(round_, topology, recovered_at=time.monotonic(), restarts_before=before)
    assert figures["process_restarts"].get("web", 0) >= 1


def test_database_connections_cut(topology: Topology, start_round: Callable[..., Round]) -> None:
    before = topology.restarts()
    round_ = start_round("db-cut")
    _when_jobs_run(round_)
    topology.db_proxy.cut()
    time.sleep(5)
    topology.db_proxy.restore()
    _finish(round_, topology, recovered_at=time.monotonic(), restarts_before=before)

"""Every job run ends at its kind's time limit: a total deadline on I/O (not per read) and between CPU steps."""

import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler

import httpx
import pytest
from rest_framework.test import APIClient

from accounts.models import User
from credits.selectors import credit_balance
from jobs.deadline import Deadline, DeadlineExceeded
from jobs.kinds import KINDS, RunContext
from jobs.models import Job, JobStatus
from tests.access_helpers import set_policy
from tests.conftest import LocalHTTPServer, auth_headers, respond, run_worker_burst
from tests.job_helpers import assert_ledger_explains_balance, kind_settings
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db

DRIP_INTERVAL = 0.3
"""Seconds between the bytes a dripping target sends: far below every per-read timeout."""

DRIP_LIMIT = 600
"""Bytes after which a dripping target gives up on its own (3 minutes), so that no test can hang for ever."""


class Dripper:
    """A fetch target that answers one byte every DRIP_INTERVAL, in its headers or in its body.

    `closed` is set when the client has cut the connection (a write failed), i.e. when its socket is gone.
    """

    def __init__(self, phase: str):
        self.phase = phase
        self.closed = threading.Event()

    def __call__(self, request: BaseHTTPRequestHandler) -> None:
        head = b"HTTP/1.1 200 OK\r\n"
        if self.phase == "body":
            head += b"Content-Length: %d\r\n\r\n" % DRIP_LIMIT
        else:
            head += b"X-Drip: "
        try:
            request.wfile.write(head)
            for _ in range(DRIP_LIMIT):
                threading.Event().wait(DRIP_INTERVAL)
                request.wfile.write(b"x")
                request.wfile.flush()
        except OSError:
            self.closed.set()
        request.close_connection = True


@pytest.fixture
def dripper(http_server: Callable[..., LocalHTTPServer]) -> Iterator[Callable[[str], tuple[Dripper, str]]]:
    def start(phase: str) -> tuple[Dripper, str]:
        handler = Dripper(phase)
        return handler, http_server(handler).url

    yield start


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
@pytest.mark.parametrize("phase", ["headers", "body"])
def test_sync_fetch_of_a_dripping_target_fails_time_limit_and_frees_the_web_thread(
    server_url: str, user: User, dripper, phase: str
) -> None:
    kind_settings("fetch", time_limit=2, retries=0)
    handler, url = dripper(phase)
    before = credit_balance(user=user)
    # Before the deadline, this request stayed open as long as the target kept dripping (minutes here).
    response = httpx.post(
        f"{server_url}/api/v1/jobs/sync/",
        json={"kind": "fetch", "input": {"url": url}},
        headers=auth_headers(user),
        timeout=20,
    )
    assert response.status_code == 502, response.text
    problem = response.json()
    assert problem["code"] == "job_failed" and problem["error"]["code"] == "time_limit"
    job = Job.objects.get(pk=problem["job_id"])
    assert (job.status, job.error_code, job.attempts) == (JobStatus.FAILED, "time_limit", 1)
    assert job.run_ms > 1500  # ran until its deadline (which starts just before the job row), not failed at once
    assert credit_balance(user=user) == before  # not the caller's fault: refunded
    assert_ledger_explains_balance(user)
    # The connection itself was cut at the deadline, not left dripping in the background.
    wait_until(handler.closed.is_set, timeout=5)


@pytest.mark.django_db(transaction=True)
def test_async_fetch_of_a_dripping_target_fails_time_limit(api: APIClient, settings, dripper) -> None:
    settings.CALLBACK_ALLOW_PRIVATE = True
    kind_settings("fetch", time_limit=1, retries=0)
    handler, url = dripper("headers")
    job_id = api.post("/api/v1/jobs/async/", {"kind": "fetch", "input": {"url": url}}, format="json").json()["id"]
    run_worker_burst()
    job = Job.objects.get(pk=job_id)
    assert (job.status, job.error_code) == (JobStatus.FAILED, "time_limit")
    wait_until(handler.closed.is_set, timeout=5)


def test_sync_retries_share_the_jobs_one_deadline(
    api: APIClient, settings, http_server: Callable[..., LocalHTTPServer]
) -> None:
    settings.CALLBACK_ALLOW_PRIVATE = True
    # Equal jitter: the first retry waits at least retry_backoff / 2 = 5 s, past the 2 s deadline.
    kind_settings("fetch", time_limit=2, retries=2, retry_backoff=10)
    server = http_server(lambda request: respond(request, 503))
    response = api.post("/api/v1/jobs/sync/", {"kind": "fetch", "input": {"url": server.url}}, format="json")
    assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_error"
    assert len(server.requests) == 1
    assert Job.objects.get().attempts == 1


def test_hash_checks_the_deadline_between_steps() -> None:
    params = {"data": "x", "iterations": 1_000_000}
    with pytest.raises(DeadlineExceeded):
        KINDS["hash"].run(params, RunContext(owner_id=0, job_id="t", deadline=Deadline.after(0)))
    small = {"data": "x", "iterations": 3}
    assert KINDS["hash"].run(small, RunContext(owner_id=0, job_id="t", deadline=Deadline.after(60)))["iterations"] == 3


@pytest.fixture
def tls_handshake_dripper() -> Iterator[tuple[str, threading.Event]]:
    """A TLS server that announces a large handshake record and then drips it: the client's handshake waits."""
    listener = socket.create_server(("127.0.0.1", 0))
    closed = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)  # the ClientHello
            try:
                conn.sendall(b"\x16\x03\x03\x40\x00")  # a handshake record of 16384 bytes follows...
                for _ in range(DRIP_LIMIT):
                    threading.Event().wait(DRIP_INTERVAL)
                    conn.sendall(b"\x00")  # ...one byte at a time
            except OSError:
                closed.set()

    threading.Thread(target=serve, daemon=True).start()
    yield f"https://127.0.0.1:{listener.getsockname()[1]}/", closed
    listener.close()


@pytest.mark.django_db(transaction=True)
def test_the_deadline_holds_during_a_dripped_tls_handshake(settings, tls_handshake_dripper) -> None:
    settings.CALLBACK_ALLOW_PRIVATE = True
    url, closed = tls_handshake_dripper
    with pytest.raises(DeadlineExceeded):
        KINDS["fetch"].run({"url": url}, RunContext(owner_id=0, job_id="t", deadline=Deadline.after(1)))
    wait_until(closed.is_set, timeout=5)


def test_a_free_uncapped_sync_job_retries_and_is_recorded_once_with_its_attempts(
    api: APIClient, settings, http_server: Callable[..., LocalHTTPServer]
) -> None:
    """Nothing to account for (free, no cap, no key): the job is inserted after its run, retries and all."""
    settings.CALLBACK_ALLOW_PRIVATE = True
    set_policy("jobs.sync", max_concurrent_per_user=0, max_concurrent_global=0)
    kind_settings("fetch", cost=0, retries=2, retry_backoff=0)
    answers = iter([503, 200])
    server = http_server(lambda request: respond(request, next(answers), b"fine"))
    response = api.post("/api/v1/jobs/sync/", {"kind": "fetch", "input": {"url": server.url}}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["status"], body["attempts"], body["cost"]) == ("succeeded", 2, 0)
    assert len(server.requests) == 2
    job = Job.objects.get()
    assert (str(job.pk), job.status, job.attempts) == (body["id"], JobStatus.SUCCEEDED, 2)
    assert [entry["code"] for entry in job.attempt_log] == ["upstream_error"]

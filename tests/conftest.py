"""Shared fixtures: real Redis, real database, real processes (gunicorn, rqworker), real HTTP servers."""

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.test.utils import override_settings
from rest_framework.test import APIClient
from rq import SimpleWorker

from accounts.models import SCOPES, User
from accounts.services import api_key_create
from jobs import queues
from jobs.pools import PoolQueue
from jobsite.process_cache import credentials_cache, settings_cache
from jobsite.redis import get_redis
from tests.job_helpers import kind_settings
from tests.processes import free_port
from tests.redis_owner import claim_test_database, flush_test_database
from tests.waiting import wait_answering

ROOT = Path(__file__).resolve().parent.parent
(ROOT / "var").mkdir(exist_ok=True)  # the SQLite test database lives there
TEST_VAR = ROOT / "var" / f"tests-{connection.vendor}"
"""This session's server logs and reports: one directory per database, so that .ci/run's SQLite and PostgreSQL
sessions, which run side by side, never write the same file."""
TEST_VAR.mkdir(exist_ok=True)


TEST_ADMISSION_DEPTH = 1000
"""QUEUE_ADMISSION_DEPTH of the test processes: tests queue jobs with no worker running, so only the tests of
back-pressure, which set their own bound, meet it (the default, 2 per worker, is a sizing for live workers)."""


@pytest.fixture(autouse=True, scope="session")
def _unbounded_admission() -> Iterator[None]:
    with override_settings(QUEUE_ADMISSION_DEPTHS=dict.fromkeys(django_settings.JOB_POOLS, TEST_ADMISSION_DEPTH)):
        yield


@pytest.fixture(autouse=True, scope="session")
def _fast_password_hashing() -> Iterator[None]:
    """Tests create many users; PBKDF2's deliberate slowness (~0.5 s a user) buys nothing here."""
    with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
        yield


def pytest_sessionstart(session: pytest.Session) -> None:
    """Before anything runs: the Redis database tests flush must be empty or a test session's."""
    refusal = claim_test_database(get_redis())
    if refusal:
        pytest.exit(refusal, returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.fixture(autouse=True)
def _clean_redis() -> Iterator[None]:
    """Each test starts with an empty Redis database (tests use their own database number) and no rows cached
    in this process: a row a test wrote and rolled back must not outlive it."""
    flush_test_database(get_redis())
    settings_cache.clear()
    credentials_cache.clear()
    yield


@pytest.fixture
def fresh_policies() -> Iterator[None]:
    """Policies read anew before and after: rows a test wrote (and rolled back) must not stay cached."""
    settings_cache.changed()
    yield
    settings_cache.changed()


@pytest.fixture
def make_user(db: None) -> Callable[..., User]:
    counter = iter(range(1, 10_000))

    def make(username: str | None = None, **fields: Any) -> User:
        return User.objects.create_user(username=username or f"user{next(counter)}", password="pw", **fields)

    return make


@pytest.fixture
def user(make_user: Callable[..., User]) -> User:
    return make_user("alice")


@pytest.fixture
def other_user(make_user: Callable[..., User]) -> User:
    return make_user("bob")


def bearer(raw_key: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {raw_key}"}


def auth_headers(user: User) -> dict[str, str]:
    """HTTP headers that authenticate as the user with a fresh API key carrying every scope."""
    _, raw_key = api_key_create(owner=user, name="http-test", scopes=list(SCOPES))
    return {"Authorization": f"Bearer {raw_key}"}


@pytest.fixture
def client_for() -> Callable[[User], APIClient]:
    """A client authenticated as the user with a real API key carrying every scope."""

    def make(user: User) -> APIClient:
        _, raw_key = api_key_create(owner=user, name="test", scopes=list(SCOPES))
        client = APIClient()
        client.credentials(**bearer(raw_key))
        return client

    return make


@pytest.fixture
def api(client_for: Callable[[User], APIClient], user: User) -> APIClient:
    return client_for(user)


def run_worker_burst(*queue_names: str) -> None:
    """Run an in-process RQ SimpleWorker until the queues are empty (dispatching pools as rqworker does)."""
    names = queue_names or (queues.JOBS_QUEUE,)
    worker = SimpleWorker(
        [queues.get_queue(name) for name in names],
        connection=queues.get_queue(names[0]).connection,
        queue_class=PoolQueue,
    )
    worker.work(burst=True, with_scheduler=False)


def _test_database_url() -> str:
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{settings['NAME']}"
    user = settings.get("USER") or "postgres"
    return f"postgres://{user}@{settings.get('HOST') or '127.0.0.1'}:{settings.get('PORT') or 5432}/{settings['NAME']}"


METRICS_DIR = tempfile.mkdtemp(prefix="jobsite-test-metrics-")
"""PROMETHEUS_MULTIPROC_DIR shared by this session's server and worker processes, as in production."""
atexit.register(shutil.rmtree, METRICS_DIR, ignore_errors=True)


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a child process that shares this test session's database, Redis and metrics."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=_test_database_url(),
        DJANGO_SETTINGS_MODULE="jobsite.settings",
        CALLBACK_ALLOW_PRIVATE="true",
        # Every request re-reads the policy version (one GET): an edit a test commits is in force at its next
        # request in every server process, without waiting out an interval.
        POLICY_CHECK_INTERVAL="0",
        PROMETHEUS_MULTIPROC_DIR=METRICS_DIR,
        QUEUE_ADMISSION_DEPTH=str(TEST_ADMISSION_DEPTH),
    )
    env.update(extra)
    return env


@contextlib.contextmanager
def gunicorn_server(name: str = "test-gunicorn", **env: str) -> Iterator[str]:
    """A real gunicorn (threads) on the test database; `env` adds to subprocess_env (e.g. a settings module)."""
    port = free_port()
    log = open(TEST_VAR / f"{name}.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            "gunicorn.conf.py",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--threads",
            "16",
        ],
        cwd=ROOT,
        env=subprocess_env(**env),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_answering(url)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="session")
def server_url(django_db_setup: None, django_db_blocker: Any) -> Iterator[str]:
    """One gunicorn for the whole session, on the test database; a test whose rows it must read needs transactional_db."""
    with gunicorn_server() as url:
        yield url


@pytest.fixture
def start_worker() -> Iterator[Callable[..., subprocess.Popen]]:
    """Start `manage.py rqworker --with-scheduler` processes on the test database; each is ended after the test.

    Each runs in its own process group, so that ending it also ends its scheduler child (RQ forks one).
    """
    started: list[subprocess.Popen] = []

    def start(*queue_names: str, **env: str) -> subprocess.Popen:
        names = list(queue_names or (queues.JOBS_QUEUE,))
        process = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "rqworker",
                *names,
                "--worker-class",
                "jobs.worker.ResilientWorker",
                "--with-scheduler",
            ],
            cwd=ROOT,
            env=subprocess_env(**env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: the scheduler it forks is ended with it
        )
        started.append(process)
        return process

    yield start
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class LocalHTTPServer:
    """A real HTTP server on 127.0.0.1 whose answers a test sets: stands in for third parties."""

    def __init__(self, handler: Callable[[BaseHTTPRequestHandler], None]):
        self.requests: list[dict[str, Any]] = []
        self.handler = handler
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                outer.requests.append(
                    {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
                )
                outer.handler(self)

            do_GET = do_POST = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def respond(
    request: BaseHTTPRequestHandler, status: int, body: bytes = b"", headers: dict[str, str] | None = None
) -> None:
    request.send_response(status)
    for name, value in (headers or {}).items():
        request.send_header(name, value)
    request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    request.wfile.write(body)


@pytest.fixture
def http_server() -> Iterator[Callable[[Callable[[BaseHTTPRequestHandler], None]], LocalHTTPServer]]:
    servers: list[LocalHTTPServer] = []

    def start(handler: Callable[[BaseHTTPRequestHandler], None]) -> LocalHTTPServer:
        server = LocalHTTPServer(handler)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def client_of(server_url: str) -> Iterator[Callable[[User], Any]]:
    """A `jc.Client` (tests.client_helpers) on the session's gunicorn with a fresh all-scopes API key of the user."""
    from tests.client_helpers import jc  # it puts the client's package on the path

    clients: list[jc.Client] = []

    def make(user: User) -> jc.Client:
        clients.append(jc.Client(server_url, auth_headers(user)["Authorization"].removeprefix("Bearer "), timeout=30))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def failing_target(http_server: Callable[..., LocalHTTPServer]) -> LocalHTTPServer:
    """A fetch target that answers 500: a failure that is not the caller's (refunded), without retries."""
    kind_settings("fetch", retries=0)
    return http_server(lambda request: respond(request, 500, b"down"))

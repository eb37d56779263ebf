"""schemathesis against the published schema: every check, every phase, with a key and anonymously, 0 failures.

The service (gunicorn, an RQ worker, a Redis of its own) and schemathesis run inside a network namespace
(tests/netns.py): the fuzzer submits `fetch` jobs and callback URLs, and nothing they name can be reached outside
the namespace. The test database is shared with it: SQLite is a file, PostgreSQL's port is relayed in.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from accounts.models import SCOPES, EndpointPolicy, RateLimitAlgorithm, User
from accounts.policies import ENDPOINT_DEFAULTS
from accounts.services import api_key_create
from credits.services import credit_grant
from jobs.idempotency import KEY_MAX_LENGTH, KEY_PATTERN
from tests import schemathesis_hooks
from tests.conftest import ROOT, TEST_VAR, subprocess_env
from tests.netns import backing_service_ports, netns_unavailable, run_in_netns
from tests.processes import REDIS_SERVER
from tests.waiting import wait_answering

SEED = 20261129
"""Fixed, so that a failure reproduces; change it to explore."""

MAX_EXAMPLES = 100
"""Examples per operation and phase (the issue's floor)."""

CONFIG = """
[checks.not_a_server_error]
# 502 job_failed (a sync job whose upstream failed) and 503 (queue full, circuit open, Redis down) are the
# documented gateway outcomes of a job; 500 and every other 5xx still fail the run.
expected-statuses = ["2xx", "3xx", "4xx", "502", "503"]

[[operations]]
# API.md: a wrong first code answers 400; the schema can state a code's shape, not which code the device shows.
include-operation-id = "me_mfa_totp_confirm"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]

[[operations]]
# The policy's upload_max_bytes caps Upload-Length (413, documented): staff edit it, no schema can state it.
# Headers the operation does not name are ignored, as HTTP has every server ignore unknown headers.
include-operation-id = "uploads_create"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "413", "429", "5xx"]
generation.allow-extra-parameters = false

[[operations]]
# A chunk that runs past the upload's announced length is 413 (documented): the upload's state, not a schema's.
include-operation-id = "uploads_append"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "413", "429", "5xx"]
generation.allow-extra-parameters = false
"""

HASH_MAX_ITERATIONS = "1000"
"""The served schema says so too: the fuzzer's hash jobs stay cheap, and the bound is still tested at its edge."""

NETNS_REDIS_PORT = 6379
"""The namespace's own Redis, on its own loopback: the fuzz run never touches the session's Redis."""

WEB_URL = "http://127.0.0.1:8000"
"""The service inside the namespace."""

FUZZ_TIMEOUT = 1500
"""Seconds for both schemathesis runs; past it the namespace child is killed and the test fails."""


def _start(argv: list, log: Path, env: dict[str, str]) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def _schemathesis_argv(python: str, config: Path, auth: list[str]) -> list:
    return [
        Path(python).parent / "schemathesis",
        "--config-file",
        config,
        "run",
        f"{WEB_URL}/api/schema/?format=json",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--no-color",
        *auth,
    ]


def _fuzz_in_namespace(api_key: str, config: Path, log_dir: Path, env: dict[str, str]) -> tuple[bool, str]:
    """Inside the namespace: Redis, gunicorn and a worker, then schemathesis with a key and anonymously."""
    python = sys.executable
    processes = [
        _start(
            [REDIS_SERVER, "--port", str(NETNS_REDIS_PORT), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            log_dir / "redis.log",
            env,
        ),
        # --limit-request-line 0: gunicorn answers a request line over 4094 bytes with its own 414 page, which no
        # Django code can shape; unlimited, such a query reaches Django (DATA_UPLOAD_MAX_NUMBER_FIELDS, then
        # problem+json).
        _start(
            [
                python,
                "-m",
                "gunicorn",
                "jobsite.wsgi",
                "--bind",
                "127.0.0.1:8000",
                "--workers",
                "2",
                "--threads",
                "4",
                "--worker-class",
                "gthread",
                "--timeout",
                "60",
                "--limit-request-line",
                "0",
            ],
            log_dir / "gunicorn.log",
            env,
        ),
        _start(
            [python, "manage.py", "rqworker", "jobs", "callbacks", "--worker-class", "rq.worker.SimpleWorker"],
            log_dir / "worker.log",
            env,
        ),
    ]
    try:
        wait_answering(WEB_URL)
        # Both runs at once, each in a process of its own: Hypothesis's generation is most of the CPU, and a run is
        # one thread (two threads of Hypothesis describing lambdas hit a CPython 3.11 ast race: SystemError).
        runs = {
            who: _start(_schemathesis_argv(python, config, auth), log_dir / f"schemathesis-{who}.log", env)
            for who, auth in (("key", ["-H", f"Authorization: Bearer {api_key}"]), ("anonymous", []))
        }
        passed = all([run.wait() == 0 for run in runs.values()])  # a list: every run is waited for
        report = "".join(f"== schemathesis, {who}\n{(log_dir / f'schemathesis-{who}.log').read_text()}" for who in runs)
        return passed, report
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait()


def test_the_hooks_make_keys_unique_by_the_rule_the_server_applies() -> None:
    assert (schemathesis_hooks.KEY_PATTERN, schemathesis_hooks.KEY_MAX_LENGTH) == (KEY_PATTERN, KEY_MAX_LENGTH)


@pytest.mark.django_db(transaction=True)  # the service's processes read the fuzzer's user and key
def test_schemathesis_finds_nothing(tmp_path: Path) -> None:
    reason = netns_unavailable()
    if reason:
        pytest.fail(f"the fuzz run needs a network namespace: {reason}")
    user = User.objects.create_user(username="fuzzer", password="pw")
    credit_grant(user=user, amount=10_000_000, reason="fuzzing")
    # Thousands of cases a minute: a rate limit would answer most of them 429 before the logic under test (and
    # preempt the checks that need a 4xx of the operation's own); tests/test_ratelimit.py covers the limits.
    for name, defaults in ENDPOINT_DEFAULTS.items():  # rows too: a transactional test before may have flushed them
        EndpointPolicy.objects.update_or_create(
            name=name, defaults={**defaults, "rate_limit_algorithm": RateLimitAlgorithm.NONE}
        )
    _, api_key = api_key_create(owner=user, name="fuzz", scopes=list(SCOPES))
    log_dir = TEST_VAR / "fuzz"  # kept after the run, for a failure's server side
    log_dir.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    env = subprocess_env(
        REDIS_URL=f"redis://127.0.0.1:{NETNS_REDIS_PORT}/0",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        HASH_MAX_ITERATIONS=HASH_MAX_ITERATIONS,
        STREAM_MAX_SECONDS="1",  # an event stream of a job that never finishes holds the fuzzer 1 s, not 25
        SCHEMATHESIS_HOOKS="tests.schemathesis_hooks",
        PYTHONPATH=str(ROOT),
    )
    _session_redis, *database_ports = backing_service_ports()  # the database relayed in; Redis is its own
    passed, report = run_in_netns(
        _fuzz_in_namespace, api_key, config, log_dir, env, forward=database_ports, timeout=FUZZ_TIMEOUT
    )
    assert passed, report[-20000:]

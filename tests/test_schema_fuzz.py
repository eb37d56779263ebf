"""schemathesis against the published schema: every check, every phase, with a key and anonymously, 0 failures.

The service (gunicorn, an RQ worker, a Redis of its own) and schemathesis run inside a network namespace this
test creates (`unshare -n`): the fuzzer submits `fetch` jobs and callback URLs, and nothing they name can be
reached outside the namespace. The test database is shared with the namespace without any network: SQLite is a
file, PostgreSQL is reached through its unix socket (a socket path works across network namespaces).
"""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from django.db import connection

from accounts.models import SCOPES, EndpointPolicy, RateLimitAlgorithm, User
from accounts.policies import ENDPOINT_DEFAULTS
from accounts.services import api_key_create
from credits.services import credit_grant
from jobs.idempotency import KEY_MAX_LENGTH, KEY_PATTERN
from tests import schemathesis_hooks
from tests.conftest import ROOT, subprocess_env

SEED = 20261129
"""Fixed, so that a failure reproduces; change it to explore."""

MAX_EXAMPLES = 100
"""Examples per operation and phase (the issue's floor)."""

POSTGRES_SOCKET_DIR = "/var/run/postgresql"

CONFIG = """
[checks.not_a_server_error]
# 502 job_failed (a sync job whose upstream failed) and 503 (queue full, circuit open, Redis down) are the
# documented gateway outcomes of a job; 500 and every other 5xx still fail the run.
expected-statuses = ["2xx", "3xx", "4xx", "502", "503"]

[[operations]]
# API.md: a wrong first code answers 400; the schema can state a code's shape, not which code the device shows.
include-operation-id = "me_mfa_totp_confirm"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]
"""

HASH_MAX_ITERATIONS = "1000"
"""The served schema says so too: the fuzzer's hash jobs stay cheap, and the bound is still tested at its edge."""


def _netns_database_url() -> str:
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{settings['NAME']}"
    return f"postgres://{settings.get('USER') or 'postgres'}@{quote(POSTGRES_SOCKET_DIR, safe='')}/{settings['NAME']}"


def _unavailable() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare and ip (util-linux, iproute2) are needed"
    if connection.vendor == "postgresql" and not Path(POSTGRES_SOCKET_DIR).is_dir():
        return f"PostgreSQL's unix socket directory {POSTGRES_SOCKET_DIR} is missing"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        return f"unshare -n fails here: {probe.stderr.decode().strip()}"
    return None


SCRIPT = r"""
set -u
ip link set lo up
trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT
redis-server --port {redis_port} --bind 127.0.0.1 --save '' --appendonly no >{log_dir}/redis.log 2>&1 &
# --limit-request-line 0: gunicorn answers a request line over 4094 bytes with its own 414 page, which no
# Django code can shape; unlimited, such a query reaches Django (DATA_UPLOAD_MAX_NUMBER_FIELDS, then problem+json).
{python} -m gunicorn jobsite.wsgi --bind 127.0.0.1:{web_port} --workers 2 --threads 4 --worker-class gthread \
    --timeout 60 --limit-request-line 0 >{log_dir}/gunicorn.log 2>&1 &
{python} manage.py rqworker jobs callbacks --worker-class rq.worker.SimpleWorker >{log_dir}/worker.log 2>&1 &
for _ in $(seq 300); do
    curl -sf -o /dev/null http://127.0.0.1:{web_port}/healthz && break
    sleep 0.1
done
status=0
for who in key anonymous; do
    echo "== schemathesis, $who"
    auth=()
    [ "$who" = key ] && auth=(-H "Authorization: Bearer {api_key}")
    # One worker: two threads of Hypothesis describing lambdas hit a CPython 3.11 ast race (SystemError).
    {schemathesis} --config-file {config} run "http://127.0.0.1:{web_port}/api/schema/?format=json" \
        --checks all --phases examples,coverage,fuzzing,stateful --max-examples {max_examples} --seed {seed} \
        --workers 1 --no-color "${{auth[@]}}" || status=1
done
exit $status
"""


def test_the_hooks_make_keys_unique_by_the_rule_the_server_applies() -> None:
    assert (schemathesis_hooks.KEY_PATTERN, schemathesis_hooks.KEY_MAX_LENGTH) == (KEY_PATTERN, KEY_MAX_LENGTH)


@pytest.mark.django_db(transaction=True)
def test_schemathesis_finds_nothing(tmp_path: Path) -> None:
    reason = _unavailable()
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
    log_dir = ROOT / "var" / f"fuzz-{connection.vendor}"  # kept after the run, for a failure's server side
    log_dir.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    bin_dir = Path(sys.executable).parent
    script = SCRIPT.format(
        redis_port=6379,  # the namespace's own loopback: no other Redis is there
        web_port=8000,
        log_dir=log_dir,
        python=shlex.quote(sys.executable),
        schemathesis=shlex.quote(str(bin_dir / "schemathesis")),
        config=config,
        api_key=api_key,
        max_examples=MAX_EXAMPLES,
        seed=SEED,
    )
    env = subprocess_env(
        DATABASE_URL=_netns_database_url(),
        REDIS_URL="redis://127.0.0.1:6379/0",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        PATH=f"{bin_dir}:{os.environ.get('PATH', '')}",
        HASH_MAX_ITERATIONS=HASH_MAX_ITERATIONS,
        SCHEMATHESIS_HOOKS="tests.schemathesis_hooks",
        PYTHONPATH=str(ROOT),
    )
    run = subprocess.run(
        ["unshare", "-n", "bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500
    )
    report = run.stdout + run.stderr
    (log_dir / "schemathesis.log").write_text(report)
    assert run.returncode == 0, report[-20000:]

"""The test session never flushes a Redis database holding keys it did not write."""

import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.conftest import ROOT
from tests.processes import RedisServer
from tests.redis_owner import OWNER_KEY, claim_test_database, flush_test_database

FOREIGN_DB = 4
"""A database number other than the one the tests use by default, on a redis-server of the test's own."""


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.kill()


def test_an_empty_database_is_claimed_and_then_flushed_keeping_the_marker(private_redis: RedisServer) -> None:
    client = private_redis.client(FOREIGN_DB)
    assert claim_test_database(client) is None
    client.set("jobsite:written-by-a-test", 1)
    assert claim_test_database(client) is None  # a later session finds its marker: the keys are a test run's
    flush_test_database(client)
    assert client.keys("*") == [OWNER_KEY.encode()]


def test_a_database_with_foreign_keys_is_refused_and_left_alone(private_redis: RedisServer) -> None:
    client = private_redis.client(FOREIGN_DB)
    client.set("someone:data", "precious")
    refusal = claim_test_database(client)
    assert refusal and f"database {FOREIGN_DB}" in refusal and "1 key(s)" in refusal
    assert client.keys("*") == [b"someone:data"]


@pytest.mark.slow
def test_a_test_session_on_a_foreign_database_exits_before_flushing(private_redis: RedisServer) -> None:
    client = private_redis.client(FOREIGN_DB)
    client.set("someone:data", "precious")
    url = f"redis://127.0.0.1:{private_redis.port}/{FOREIGN_DB}"
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": url, "SECRET_KEY": "test-only-secret-key"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "tests/test_health.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, run.stdout + run.stderr
    assert f"refusing to flush Redis database {FOREIGN_DB}" in run.stdout + run.stderr
    assert client.get("someone:data") == b"precious"

import socket
import time
from collections.abc import Callable, Iterator

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from accounts.models import RateLimitAlgorithm, User
from accounts.ratelimit import rate_limit_hit
from jobs.models import IdempotencyRecord, Job
from jobsite.redis import get_redis
from tests.access_helpers import set_policy
from tests.conftest import auth_headers
from tests.processes import free_port
from tests.traffic_http import fire_concurrently

HASH = {"kind": "hash", "input": {"data": "hello", "iterations": 10}}


def hit(algorithm: str, key: str, now_ms: int, **limits: int) -> tuple[bool, int, int]:
    decision = rate_limit_hit(algorithm=algorithm, key=key, now_ms=now_ms, **limits)
    return decision.allowed, decision.remaining, decision.retry_after_ms


# --- semantics, with the clock passed in (no sleeping) ---------------------------------------------


def test_token_bucket_burst_then_refill() -> None:
    bucket = {"limit": 3, "window": 10, "refill_rate": 1}  # capacity 3, one token per 10 s
    assert [hit("token_bucket", "tb", 0, **bucket)[:2] for _ in range(3)] == [(True, 2), (True, 1), (True, 0)]
    assert hit("token_bucket", "tb", 0, **bucket) == (False, 0, 10_000)
    assert hit("token_bucket", "tb", 5_000, **bucket) == (False, 0, 5_000)  # a rejection consumes nothing
    assert hit("token_bucket", "tb", 10_000, **bucket) == (True, 0, 0)
    assert hit("token_bucket", "tb", 10_000, **bucket)[0] is False
    # A long pause refills to capacity, never beyond.
    later = [hit("token_bucket", "tb", 1_000_000, **bucket)[0] for _ in range(4)]
    assert later == [True, True, True, False]


def test_token_bucket_refill_rate_is_tokens_per_window() -> None:
    bucket = {"limit": 10, "window": 60, "refill_rate": 30}  # 30 tokens a minute: one per 2 s
    for _ in range(10):
        assert hit("token_bucket", "tb2", 0, **bucket)[0]
    assert hit("token_bucket", "tb2", 1_999, **bucket)[0] is False
    assert hit("token_bucket", "tb2", 2_000, **bucket)[0] is True


def test_fixed_window_limit_and_edges() -> None:
    window = {"limit": 2, "window": 10}
    assert hit("fixed_window", "fw", 10_500, **window)[:2] == (True, 1)
    assert hit("fixed_window", "fw", 10_600, **window)[:2] == (True, 0)
    assert hit("fixed_window", "fw", 10_700, **window) == (False, 0, 9_300)
    assert hit("fixed_window", "fw", 19_999, **window) == (False, 0, 1)
    assert hit("fixed_window", "fw", 20_000, **window)[:2] == (True, 1)  # a new window starts on the boundary
    # The known edge burst of fixed windows: 2 at the end of one window, 2 at the start of the next.
    edge = [hit("fixed_window", "fw2", now, **window)[0] for now in (29_998, 29_999, 30_000, 30_001)]
    assert edge == [True, True, True, True]


def test_sliding_window_is_exact() -> None:
    window = {"limit": 2, "window": 10}
    assert hit("sliding_window", "sw", 0, **window)[0]
    assert hit("sliding_window", "sw", 5_000, **window)[0]
    assert hit("sliding_window", "sw", 9_999, **window) == (False, 0, 1)
    assert hit("sliding_window", "sw", 10_000, **window)[0] is True  # the call at 0 left the window
    assert hit("sliding_window", "sw", 10_001, **window) == (False, 0, 4_999)
    # No edge burst: at most `limit` in any window, even across fixed-window boundaries.
    assert [hit("sliding_window", "sw2", now, **window)[0] for now in (19_998, 19_999, 20_000, 20_001)] == [
        True,
        True,
        False,
        False,
    ]


def test_sliding_window_counts_calls_in_the_same_millisecond_separately() -> None:
    assert [hit("sliding_window", "sw3", 1_000, limit=3, window=1)[0] for _ in range(5)] == [
        True,
        True,
        True,
        False,
        False,
    ]


def test_throttle_spacing() -> None:
    assert hit("throttle", "th", 0, limit=1, window=5) == (True, 0, 0)
    assert hit("throttle", "th", 1_000, limit=1, window=5) == (False, 0, 4_000)
    assert hit("throttle", "th", 4_999, limit=1, window=5) == (False, 0, 1)
    assert hit("throttle", "th", 5_000, limit=1, window=5)[0] is True  # rejected calls did not push it back
    assert hit("throttle", "th", 9_999, limit=1, window=5)[0] is False


def test_debounce_needs_a_quiet_period_since_the_last_attempt() -> None:
    assert hit("debounce", "db", 0, limit=1, window=5)[0] is True
    assert hit("debounce", "db", 1_000, limit=1, window=5) == (False, 0, 5_000)
    assert hit("debounce", "db", 5_500, limit=1, window=5)[0] is False  # only 4.5 s quiet since 1.0 s
    assert hit("debounce", "db", 10_500, limit=1, window=5)[0] is True  # 5 s quiet since 5.5 s
    assert hit("debounce", "db", 10_501, limit=1, window=5)[0] is False


@pytest.mark.parametrize("algorithm", ["token_bucket", "fixed_window", "sliding_window", "throttle", "debounce"])
def test_keys_expire_using_server_time(algorithm: str) -> None:
    decision = rate_limit_hit(algorithm=algorithm, key=f"exp:{algorithm}", limit=5, window=30, refill_rate=5)
    assert decision.allowed
    ttl = get_redis().pttl(f"exp:{algorithm}")
    assert 0 < ttl <= 30_000


# --- the throttle on endpoints: headers, 429, keys, Redis down ---------------------------------------


@pytest.mark.django_db
def test_headers_on_every_response_and_429_consumes_nothing(api: APIClient) -> None:
    set_policy("jobs.sync", rate_limit_algorithm="fixed_window", rate_limit=2, rate_window=60)
    ok = api.post("/api/v1/jobs/sync/", HASH, format="json")
    assert ok.status_code == 200
    assert ok["RateLimit-Policy"] == '"jobs.sync";q=2;w=60'
    assert ok["RateLimit"].startswith('"jobs.sync";r=1;t=')
    assert 0 < int(ok["RateLimit"].rsplit("t=", 1)[1]) <= 60
    invalid = api.post("/api/v1/jobs/sync/", {"kind": "hash", "input": {}}, format="json")
    assert invalid.status_code == 400
    assert invalid["RateLimit"].startswith('"jobs.sync";r=0;')
    limited = api.post("/api/v1/jobs/sync/", HASH, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    assert limited.status_code == 429
    assert limited["Content-Type"] == "application/problem+json"
    assert limited["RateLimit-Policy"] == '"jobs.sync";q=2;w=60'
    assert int(limited["Retry-After"]) >= 1
    body = limited.json()
    assert body["code"] == "rate_limited"
    assert body["limit"] == {
        "policy": "jobs.sync",
        "algorithm": "fixed_window",
        "key": "user",
        "quota": 2,
        "window": 60,
    }
    assert "jobs.sync" in body["detail"]
    assert Job.objects.count() == 1
    assert IdempotencyRecord.objects.count() == 0


@pytest.mark.django_db
def test_no_headers_when_the_policy_has_no_limit(api: APIClient) -> None:
    set_policy("jobs.read", rate_limit_algorithm="none")
    response = api.get("/api/v1/jobs/")
    assert response.status_code == 200
    assert not response.has_header("RateLimit")


@pytest.mark.django_db
@pytest.mark.parametrize("key,second_user_status", [("user", 200), ("ip", 429), ("global", 429)])
def test_rate_limit_key(
    key: str, second_user_status: int, client_for: Callable[[User], APIClient], user: User, other_user: User
) -> None:
    set_policy("jobs.read", rate_limit_algorithm="fixed_window", rate_limit=1, rate_window=60, rate_limit_key=key)
    assert client_for(user).get("/api/v1/jobs/").status_code == 200
    # Both test clients come from 127.0.0.1.
    assert client_for(other_user).get("/api/v1/jobs/").status_code == second_user_status


@pytest.fixture(params=["refused", "silent"])
def redis_unreachable(request: pytest.FixtureRequest) -> Iterator[None]:
    """Point the app's Redis client at a port that refuses, or at a socket that never answers."""
    listener = None
    port = free_port()
    if request.param == "silent":
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)  # connections complete in the kernel backlog; nothing ever replies
        port = listener.getsockname()[1]
    saved = settings.REDIS_URL, settings.REDIS_SOCKET_TIMEOUT
    settings.REDIS_URL, settings.REDIS_SOCKET_TIMEOUT = f"redis://127.0.0.1:{port}/0", 0.3
    get_redis.cache_clear()
    try:
        yield
    finally:
        settings.REDIS_URL, settings.REDIS_SOCKET_TIMEOUT = saved
        get_redis.cache_clear()
        if listener is not None:
            listener.close()


@pytest.mark.django_db
def test_redis_down_job_creation_fails_closed_reads_fail_open(api: APIClient, redis_unreachable: None) -> None:
    set_policy("jobs.read", rate_limit_algorithm="fixed_window", rate_limit=5, rate_window=60)
    for path in ("/api/v1/jobs/sync/", "/api/v1/jobs/async/"):
        started = time.monotonic()
        response = api.post(path, HASH, format="json")
        assert response.status_code == 503, response.content
        assert response.json()["code"] == "service_unavailable"
        assert time.monotonic() - started < 5, "a dead Redis must not hang a request"
    assert Job.objects.count() == 0
    assert api.get("/api/v1/jobs/").status_code == 200


@pytest.mark.django_db
def test_redis_down_without_a_limiter_still_refuses_cleanly(api: APIClient, redis_unreachable: None) -> None:
    """No limiter to fail closed: the result cache, queue or circuit meets the dead Redis, and answers 503."""
    for name in ("jobs.sync", "jobs.async"):
        set_policy(name, rate_limit_algorithm="none")
    for path in ("/api/v1/jobs/sync/", "/api/v1/jobs/async/"):
        response = api.post(path, HASH, format="json")
        assert response.status_code == 503, response.content
        assert response.json()["code"] == "service_unavailable"
        assert int(response["Retry-After"]) == response.json()["retry_after"] >= 1
    assert Job.objects.count() == 0


@pytest.mark.django_db
def test_redis_down_reads_fail_closed_when_configured(api: APIClient, redis_unreachable: None) -> None:
    set_policy("jobs.read", rate_limit_algorithm="fixed_window", rate_limit=5, rate_window=60)
    settings.RATELIMIT_FAIL_OPEN_READS = False
    try:
        response = api.get("/api/v1/jobs/")
    finally:
        settings.RATELIMIT_FAIL_OPEN_READS = True
    assert response.status_code == 503
    assert response.json()["code"] == "service_unavailable"


# --- exactness under real concurrency, over HTTP --------------------------------------------------

CONCURRENT = 100
EXACT_CASES = {
    # algorithm: (policy fields, admitted of 100); windows are long so no refill or boundary falls inside the run.
    RateLimitAlgorithm.TOKEN_BUCKET: ({"rate_limit": 10, "rate_window": 1_000_000, "refill_rate": 1}, 10),
    RateLimitAlgorithm.FIXED_WINDOW: ({"rate_limit": 10, "rate_window": 1_000_000}, 10),
    RateLimitAlgorithm.SLIDING_WINDOW: ({"rate_limit": 10, "rate_window": 3600}, 10),
    RateLimitAlgorithm.THROTTLE: ({"rate_window": 3600}, 1),
    RateLimitAlgorithm.DEBOUNCE: ({"rate_window": 3600}, 1),
}


def _get_jobs_concurrently(url: str, user: User) -> list[int]:
    headers = auth_headers(user)
    responses = fire_concurrently(
        CONCURRENT, lambda client, _: client.get(f"{url}/api/v1/jobs/?page_size=1", headers=headers)
    )
    return [response.status_code for response in responses]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("algorithm", list(EXACT_CASES))
def test_exact_under_concurrency(server_url: str, make_user: Callable[..., User], algorithm: str) -> None:
    fields, expected = EXACT_CASES[algorithm]
    set_policy("jobs.read", rate_limit_algorithm=algorithm, rate_limit_key="user", **fields)
    statuses = _get_jobs_concurrently(server_url, make_user())
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) == expected, f"{algorithm}: {statuses.count(200)} admitted of {CONCURRENT}"

"""Rate limiter and traffic-policy benchmark (see bench/README.md).

1. Limiter decisions per second, one client thread, for each of our five Lua limiters and for DRF's
   UserRateThrottle on the same Redis (Django's RedisCache); every decision is an admission, spread over
   many keys so that no state grows large (fair to DRF, whose history list is pickled on every call).
2. Median latency the whole traffic policy (rate limit + concurrency cap + idempotency key) adds to a sync
   `hash` request, policy on vs off, in blocks that alternate, in-process through Django's test client on
   a throw-away test database.

Usage: REDIS_URL=redis://127.0.0.1:6379/<db> .venv/bin/python bench/ratelimit.py [--decisions N] [--requests N]
The Redis database is FLUSHed: give it one nobody else uses.
"""

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "jobsite.settings")
os.environ.setdefault("SECRET_KEY", "bench-only-secret-key")
os.environ.setdefault("LOG_LEVEL", "WARNING")

import django

django.setup()

from django.db import connection  # noqa: E402
from rest_framework.test import APIClient  # noqa: E402
from rest_framework.throttling import UserRateThrottle  # noqa: E402

from accounts.models import (  # noqa: E402
    EndpointPolicy,
    RateLimitAlgorithm,
    User,
)
from accounts.policies import ENDPOINT_DEFAULTS  # noqa: E402
from accounts.ratelimit import rate_limit_hit  # noqa: E402
from jobsite.redis import get_redis  # noqa: E402

PER_KEY = 10
"""Decisions per key (the limit): spread over total/PER_KEY keys, every decision admits."""

ALGORITHMS = [a for a in RateLimitAlgorithm.values if a != RateLimitAlgorithm.NONE]


class BenchUserThrottle(UserRateThrottle):
    rate = f"{PER_KEY}/hour"


def decisions_per_second(decide, total: int) -> float:
    started = time.perf_counter()
    for index in range(total):
        decide(index // PER_KEY)
    return total / (time.perf_counter() - started)


def ours(algorithm: str, run: str):
    # Throttle and debounce admit one call per interval, so each of their decisions gets a fresh key.
    one_per_key = algorithm in (RateLimitAlgorithm.THROTTLE, RateLimitAlgorithm.DEBOUNCE)
    counter = iter(range(10**9))

    def decide(key_index: int) -> None:
        key = f"bench:{run}:{algorithm}:{next(counter) if one_per_key else key_index}"
        decision = rate_limit_hit(algorithm=algorithm, key=key, limit=PER_KEY, window=3600, refill_rate=PER_KEY)
        assert decision.allowed

    return decide


def drf(run: str):
    def decide(key_index: int) -> None:
        request = SimpleNamespace(user=SimpleNamespace(is_authenticated=True, pk=f"{run}-{key_index}"))
        assert BenchUserThrottle().allow_request(request, None)

    return decide


def bench_decisions(total: int) -> None:
    get_redis().flushdb()
    drf_rate = decisions_per_second(drf(uuid.uuid4().hex), total)
    print(f"\n1. limiter decisions/s, 1 thread, {total} admissions each, {PER_KEY} per key")
    print(f"   {'DRF UserRateThrottle (RedisCache)':36s} {drf_rate:9.0f}/s  1.00x")
    for algorithm in ALGORITHMS:
        get_redis().flushdb()
        rate = decisions_per_second(ours(algorithm, uuid.uuid4().hex), total)
        print(f"   {algorithm:36s} {rate:9.0f}/s  {rate / drf_rate:.2f}x DRF")


MODES = ("off", "limiter", "full")
"""off: no traffic policy; limiter: the sliding-window rate limit only; full: limit + both caps + Idempotency-Key."""


def set_policy(mode: str) -> None:
    fields = {**ENDPOINT_DEFAULTS["jobs.sync"], "max_concurrent_per_user": 0, "max_concurrent_global": 0}
    fields["rate_limit_algorithm"] = RateLimitAlgorithm.NONE if mode == "off" else RateLimitAlgorithm.SLIDING_WINDOW
    fields.update(rate_limit=10**6, rate_window=3600)
    if mode == "full":
        fields.update(max_concurrent_per_user=1000, max_concurrent_global=100000)
    EndpointPolicy.objects.update_or_create(name="jobs.sync", defaults=fields)


def bench_latency(requests: int, blocks: int = 10) -> None:
    user = User.objects.create_user("bench")
    client = APIClient(SERVER_NAME="localhost")
    client.force_authenticate(user)
    body = {"kind": "hash", "input": {"data": "hello", "iterations": 1000}}
    timings: dict[str, list[float]] = {mode: [] for mode in MODES}
    per_block = max(1, requests // blocks)
    for block in range(blocks * len(MODES)):
        mode = MODES[block % len(MODES)]
        set_policy(mode)
        for _ in range(per_block):
            headers = {"HTTP_IDEMPOTENCY_KEY": uuid.uuid4().hex} if mode == "full" else {}
            started = time.perf_counter()
            response = client.post("/api/v1/jobs/sync/", body, format="json", **headers)
            timings[mode].append(time.perf_counter() - started)
            assert response.status_code == 200, response.content
    median = {mode: statistics.median(values) * 1000 for mode, values in timings.items()}
    print(f"\n2. sync hash (1000 iterations), {per_block * blocks} requests per mode, {connection.vendor}")
    for mode in MODES:
        added = median[mode] - median["off"]
        print(
            f"   {mode:8s} median {median[mode]:6.2f} ms  adds {added:5.2f} ms  {median[mode] / median['off']:.2f}x off"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=20000)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    bench_decisions(args.decisions)
    test_db = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        get_redis().flushdb()
        bench_latency(args.requests)
    finally:
        connection.creation.destroy_test_db(test_db, verbosity=0)
        get_redis().flushdb()


if __name__ == "__main__":
    main()

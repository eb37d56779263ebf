"""One request at a time through the full API, policies on vs off, and the profile of one sync job (issue 11).

Method (figures and commands in bench/README.md):
- A fresh stack in the topology of the run command (bench/stack.py RUN_COMMAND), an API key, `hash` with
  1 iteration and unique data (the result cache never answers). One request at a time over one keep-alive
  connection: p50 of a sync job, an async acknowledgement, a job list (first page) and /healthz, with the
  policies as shipped.
- Policies on vs off, sync only, in blocks that alternate: `on` = a token-bucket rate limit that never
  refuses, per-user and global concurrency caps, a credit charge (cost 1), a fresh Idempotency-Key per
  request and the LRU result cache (a miss: data is unique); `off` = no limit, no caps, cost 0, no
  Idempotency-Key, no cache. A change reaches every process within POLICY_CHECK_INTERVAL.
- `--each-policy`: each of those policies alone on against every policy off, the same way (SINGLE_POLICIES).
- Profile of POST /api/v1/jobs/sync/ in this process through Django's test client on the stack's database
  and Redis: SQL statements and database round trips (CaptureQueriesContext, which logs BEGIN/COMMIT too),
  and Redis round trips (commands, a pipeline counting once), by wrapping redis-py's execute methods here.
  Under gunicorn a request also runs the connection health check, which the test client skips; on a quiet
  connection it sends nothing (jobsite.postgresql: Django's own sent a `SELECT 1`).

- Profile of GET /api/v1/jobs/{id}/ the same way: what the gate (authentication, policy checks, rate limit)
  costs on a read that itself is one SELECT.

    .venv/bin/python -m bench.overhead [-n 200] [--database-url postgres://...] [--json FILE] [--no-comparison]
        [--each-policy]
"""

import argparse
import contextlib
import itertools
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.stack import RUN_COMMAND, running_stack
from bench.throughput import UNLIMITED

WARM_UP = 20
"""Requests sent before each series, not measured."""
BLOCKS = 10
"""On/off blocks per mode in the policy comparison; each holds n / BLOCKS requests."""

FULL_POLICY = {
    "rate_limit_algorithm": "token_bucket",
    "rate_limit": 1_000_000,
    "refill_rate": 1_000_000,
    "rate_window": 60,
    "max_concurrent_per_user": 1000,
    "max_concurrent_global": 100_000,
    "queue_max_depth": 100_000,
}
"""Every limit of an endpoint policy on, none of them ever refusing."""
NO_POLICY = dict(assignment.split("=", 1) for assignment in UNLIMITED)
POLICIES_ON = {"jobs.sync": FULL_POLICY, "jobs.async": FULL_POLICY, "kind.hash": {"cost": 1, "cache_algorithm": "lru"}}
POLICIES_OFF = {"jobs.sync": NO_POLICY, "jobs.async": NO_POLICY, "kind.hash": {"cost": 0, "cache_algorithm": "none"}}
_request_numbers = itertools.count()


def hash_body() -> dict[str, Any]:
    """One iteration of unique data: the work is negligible and the result cache never answers."""
    return {"kind": "hash", "input": {"data": f"overhead-{next(_request_numbers)}", "iterations": 1}}


def p50_ms(send: Callable[[], httpx.Response], n: int) -> float:
    """Median latency of n requests sent one at a time, after WARM_UP unmeasured ones."""
    latencies = []
    for index in range(WARM_UP + n):
        started = time.perf_counter()
        response = send()
        elapsed = time.perf_counter() - started
        response.raise_for_status()
        if index >= WARM_UP:
            latencies.append(elapsed * 1000)
    return statistics.median(latencies)


def serial_figures(client: httpx.Client, n: int, job_id: str) -> dict[str, float]:
    return {
        "healthz_p50_ms": p50_ms(lambda: client.get("/healthz"), n),
        "job_get_p50_ms": p50_ms(lambda: client.get(f"/api/v1/jobs/{job_id}/"), n),
        "sync_p50_ms": p50_ms(lambda: client.post("/api/v1/jobs/sync/", json=hash_body()), n),
        "job_list_p50_ms": p50_ms(lambda: client.get("/api/v1/jobs/"), n),
        "async_ack_p50_ms": p50_ms(lambda: client.post("/api/v1/jobs/async/", json=hash_body()), n),
    }


def apply_policies(policies: dict[str, dict[str, Any]]) -> None:
    """Through `manage.py policy import`, in this process; then wait until every process has re-read them."""
    from django.conf import settings
    from django.core.management import call_command

    with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
        json.dump(policies, file)
        file.flush()
        call_command("policy", "import", file.name, stdout=open(os.devnull, "w"))  # noqa: SIM115
    time.sleep(2 * settings.POLICY_CHECK_INTERVAL)


def policies_on_vs_off(client: httpx.Client, n: int) -> dict[str, Any]:
    """Sync p50 with every policy on and with them off, in alternating blocks (the machine's drift hits both)."""

    def send_on() -> httpx.Response:
        return client.post("/api/v1/jobs/sync/", json=hash_body(), headers={"Idempotency-Key": str(uuid.uuid4())})

    def send_off() -> httpx.Response:
        return client.post("/api/v1/jobs/sync/", json=hash_body())

    block_p50s: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(BLOCKS):
        for mode, policies, send in (("off", POLICIES_OFF, send_off), ("on", POLICIES_ON, send_on)):
            apply_policies(policies)
            block_p50s[mode].append(p50_ms(send, max(1, n // BLOCKS)))
    medians = {mode: statistics.median(values) for mode, values in block_p50s.items()}
    return {
        "sync_policies_off_p50_ms": medians["off"],
        "sync_policies_on_p50_ms": medians["on"],
        "policies_cost_ms": medians["on"] - medians["off"],
        "block_p50s_ms": block_p50s,
    }


RATE_LIMIT_FIELDS = ("rate_limit_algorithm", "rate_limit", "refill_rate", "rate_window")
CAP_FIELDS = ("max_concurrent_per_user", "max_concurrent_global")


def _with(endpoint_fields: dict[str, Any] | None = None, **kind: Any) -> dict[str, dict[str, Any]]:
    """POLICIES_OFF with these endpoint fields on both job endpoints and these kind.hash settings."""
    endpoint = {**NO_POLICY, **(endpoint_fields or {})}
    return {"jobs.sync": endpoint, "jobs.async": endpoint, "kind.hash": {**POLICIES_OFF["kind.hash"], **kind}}


SINGLE_POLICIES: dict[str, tuple[dict[str, dict[str, Any]], bool]] = {
    "rate limit": (_with({name: FULL_POLICY[name] for name in RATE_LIMIT_FIELDS}), False),
    "per-user cap": (_with({"max_concurrent_per_user": FULL_POLICY["max_concurrent_per_user"]}), False),
    "both caps": (_with({name: FULL_POLICY[name] for name in CAP_FIELDS}), False),
    "charge": (_with(cost=1), False),
    "result cache (miss)": (_with(cache_algorithm="lru"), False),
    "Idempotency-Key": (POLICIES_OFF, True),
}
"""Each policy of POLICIES_ON alone: its policies, and whether requests carry a fresh Idempotency-Key."""


def each_policy_alone(client: httpx.Client, n: int, blocks: int = 5) -> dict[str, float]:
    """What each policy costs by itself: sync p50 with it alone on minus with every policy off, in blocks that
    alternate (median of the blocks' p50s)."""

    def send(key: bool) -> httpx.Response:
        headers = {"Idempotency-Key": str(uuid.uuid4())} if key else {}
        return client.post("/api/v1/jobs/sync/", json=hash_body(), headers=headers)

    costs = {}
    for name, (policies, key) in SINGLE_POLICIES.items():
        block_p50s: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(blocks):
            for on in (False, True):
                apply_policies(policies if on else POLICIES_OFF)
                sends_key = key and on
                block_p50s[on].append(p50_ms(lambda sends_key=sends_key: send(sends_key), max(1, n // blocks)))
        costs[name] = statistics.median(block_p50s[True]) - statistics.median(block_p50s[False])
    return costs


@contextlib.contextmanager
def redis_round_trips() -> Iterator[list[str]]:
    """Every Redis round trip this process makes meanwhile: a command's name, or `pipeline[...]`."""
    from redis.client import Pipeline, Redis

    trips: list[str] = []
    execute_command, execute_pipeline = Redis.execute_command, Pipeline.execute
    execute_immediate = Pipeline.immediate_execute_command

    def counted_command(self: Redis, *args: Any, **options: Any) -> Any:
        trips.append(str(args[0]))
        return execute_command(self, *args, **options)

    def counted_pipeline(self: Pipeline, *args: Any, **options: Any) -> Any:
        trips.append(f"pipeline[{' '.join(str(command[0][0]) for command in self.command_stack)}]")
        return execute_pipeline(self, *args, **options)

    def counted_immediate(self: Pipeline, *args: Any, **options: Any) -> Any:
        trips.append(str(args[0]))  # what a pipeline sends ahead of itself (SCRIPT EXISTS for its scripts, WATCH)
        return execute_immediate(self, *args, **options)

    Redis.execute_command, Pipeline.execute = counted_command, counted_pipeline
    Pipeline.immediate_execute_command = counted_immediate  # type: ignore[method-assign]
    try:
        yield trips
    finally:
        Redis.execute_command, Pipeline.execute = execute_command, execute_pipeline
        Pipeline.immediate_execute_command = execute_immediate  # type: ignore[method-assign]


TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK")


def _statements(captured: list[str]) -> int:
    """Captured queries less transaction control, which Django logs too (BEGIN, COMMIT, ROLLBACK)."""
    return sum(not statement.upper().startswith(TRANSACTION_CONTROL) for statement in captured)


def profile_sync(
    api_key: str, requests: int = 20, *, path: str = "/api/v1/jobs/sync/", idempotency: bool = False
) -> dict[str, Any]:
    """Statements and round trips of one POST to `path` (sync or async job) in process (after warm-up), and its p50.

    `idempotency`: every request carries a fresh Idempotency-Key.
    """

    def post(client: Any) -> Any:
        headers = {"Idempotency-Key": str(uuid.uuid4())} if idempotency else {}
        return client.post(path, hash_body(), format="json", headers=headers)

    return _profile(api_key, post, requests)


def profile_job_get(api_key: str, job_id: str, requests: int = 20) -> dict[str, Any]:
    """The same for GET /api/v1/jobs/{id}/: the gate's share of a read of one row."""
    return _profile(api_key, lambda client: client.get(f"/api/v1/jobs/{job_id}/"), requests)


def _profile(api_key: str, request: Callable[[Any], Any], requests: int) -> dict[str, Any]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from rest_framework.test import APIClient

    client = APIClient(HTTP_HOST="127.0.0.1", HTTP_AUTHORIZATION=f"Bearer {api_key}")

    def send() -> Any:
        response = request(client)
        assert response.status_code in (200, 202), response.content
        return response

    for _ in range(WARM_UP):
        send()
    profiles = []
    for _ in range(requests):
        with (
            CaptureQueriesContext(connection) as queries,
            redis_round_trips() as trips,
        ):
            started = time.perf_counter()
            send()
            elapsed_ms = (time.perf_counter() - started) * 1000
        profiles.append((elapsed_ms, [query["sql"] for query in queries.captured_queries], trips))
    _, captured, trips = profiles[-1]
    return {
        "in_process_p50_ms": statistics.median(elapsed for elapsed, *_ in profiles),
        "sql_statements": _statements(captured),
        "sql_statements_range": [min(_statements(p[1]) for p in profiles), max(_statements(p[1]) for p in profiles)],
        "database_round_trips": len(captured),
        "redis_round_trips": len(trips),
        "redis_commands": trips,
        "statements": captured,
    }


def profiles_off_and_on(api_key: str) -> dict[str, dict[str, Any]]:
    """A sync job and an async acknowledgement profiled with every policy off, then every policy on."""
    profiles = {}
    for mode, policies in (("off", POLICIES_OFF), ("on", POLICIES_ON)):
        apply_policies(policies)
        for kind, path in (("sync", "/api/v1/jobs/sync/"), ("async", "/api/v1/jobs/async/")):
            profiles[f"{kind} {mode}"] = profile_sync(api_key, path=path, idempotency=mode == "on")
    return profiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="measured requests per figure")
    parser.add_argument("--database-url", help="the stack's database (default: a fresh SQLite file)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/8", help="the stack's Redis db (FLUSHed)")
    parser.add_argument("--json", type=Path, help="write every figure, and the profiled statements, here")
    parser.add_argument("--no-comparison", action="store_true", help="skip the policies on/off comparison (slow)")
    parser.add_argument("--each-policy", action="store_true", help="also measure each policy alone (slow)")
    args = parser.parse_args()
    load_average = {"start": os.getloadavg()}
    with running_stack(topology=RUN_COMMAND, redis_url=args.redis_url, database_url=args.database_url) as stack:
        os.environ.update(stack.env)  # this process profiles in-process on the stack's database and Redis
        import django

        django.setup()
        headers = {"Authorization": f"Bearer {stack.api_key}"}
        with httpx.Client(base_url=stack.url, headers=headers, timeout=30) as client:
            job_id = client.post("/api/v1/jobs/sync/", json=hash_body()).raise_for_status().json()["id"]
            figures = serial_figures(client, args.n, job_id)
            profile = profile_sync(stack.api_key)
            get_profile = profile_job_get(stack.api_key, job_id)
            if not args.no_comparison:
                figures.update(policies_on_vs_off(client, args.n))
            if args.each_policy:
                figures["each_policy_alone_ms"] = each_policy_alone(client, args.n)
            profiles = profiles_off_and_on(stack.api_key)
    load_average["end"] = os.getloadavg()
    database = "PostgreSQL" if args.database_url else "SQLite"
    print(f"one request at a time, hash iterations=1, n={args.n}, {database}; load average {load_average}")
    for name in ("healthz_p50_ms", "job_get_p50_ms", "sync_p50_ms", "async_ack_p50_ms", "job_list_p50_ms"):
        print(f"  {name:<28} {figures[name]:8.2f}")
    if not args.no_comparison:
        print(
            f"  sync, every policy off / on  {figures['sync_policies_off_p50_ms']:.2f} / "
            f"{figures['sync_policies_on_p50_ms']:.2f} ms p50: policies cost {figures['policies_cost_ms']:+.2f} ms"
            " (issue target <= 2 ms)"
        )
    for name, cost in figures.get("each_policy_alone_ms", {}).items():
        print(f"  sync, {name} alone: {cost:+.2f} ms p50 against every policy off")
    for title, figure in (("POST /api/v1/jobs/sync/", profile), ("GET /api/v1/jobs/{id}/", get_profile)):
        print(f"profile of {title} (policies as shipped, in process):")
        print(
            f"  {figure['sql_statements']} SQL statements (range {figure['sql_statements_range']}),"
            f" {figure['database_round_trips']} database round trips with BEGIN/COMMIT,"
            f" {figure['redis_round_trips']} Redis round trips: {' '.join(figure['redis_commands'])};"
            f" in-process p50 {figure['in_process_p50_ms']:.2f} ms"
        )
        for statement in figure["statements"]:
            print(f"    {statement[:150]}")
    for name, each in profiles.items():
        print(
            f"  {name:<10} {each['sql_statements']:3d} SQL statements, {each['database_round_trips']:3d} database round"
            f" trips, {each['redis_round_trips']} Redis round trips; in-process p50 {each['in_process_p50_ms']:.2f} ms"
        )
    if args.json:
        document = {
            "config": {"n": args.n, "database": database, "load_average": load_average},
            "figures": figures,
            "profile": profile,
            "profiles_off_and_on": profiles,
            "job_get_profile": get_profile,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()

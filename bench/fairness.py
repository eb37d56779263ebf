"""Per-user fairness inside a pool (issue 20): a heavy user's backlog against a light user's few jobs, with
QUEUE_FAIRNESS on and off.

Method: a fresh stack per setting (bench/stack.py: gunicorn 2 x 16 threads, W SimpleWorkers on `jobs`, limits
lifted, result cache off, the admission bound above the burst). The heavy user submits H async `hash` jobs
(1000 iterations, ~1.5 ms of CPU) at concurrency C while the workers are suspended (RQ's suspension), so the
whole backlog waits when they resume; then the light user submits L jobs one after another while the workers
drain it. A job's queue wait is its own `queue_wait_ms` (acceptance to a worker's claim). Reported per user:
p50, p99 and max of the waits, and how many heavy jobs started after the light user's last one (fair: most of
the backlog; first come, first served: none).

    .venv/bin/python -m bench.fairness [--heavy 5000] [--light 50] [--workers 2] [-c 20]
        [--redis-url redis://127.0.0.1:6379/9] [--json FILE]
"""

import argparse
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
from redis import Redis
from rq.suspension import resume, suspend

from bench.stack import Stack, Topology, running_stack
from bench.throughput import UNLIMITED

ITERATIONS = 1000
"""Small hash jobs: the bench measures waiting, not work."""
LIGHT_USER = "light"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _submit(client: httpx.Client, tag: str, i: int) -> str:
    body = {"kind": "hash", "input": {"data": f"{tag}-{i}-{time.time()}", "iterations": ITERATIONS}}
    response = client.post("/api/v1/jobs/async/", json=body)
    response.raise_for_status()
    return str(response.json()["id"])


def _wait_drained(clients: list[httpx.Client], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = [
            client.get("/api/v1/jobs/", params={"mode": "async", "status": status, "page_size": 1}).json()["results"]
            for client in clients
            for status in ("queued", "running")
        ]
        if not any(pending):
            return
        time.sleep(0.2)
    raise TimeoutError(f"jobs still pending after {timeout} s")


def _rows(client: httpx.Client, ids: set[str]) -> list[dict[str, Any]]:
    export = client.get("/api/v1/jobs/export/", params={"format": "jsonl"}, timeout=120)
    return [row for row in map(json.loads, filter(None, export.text.splitlines())) if row["id"] in ids]


def _waits(rows: list[dict[str, Any]]) -> dict[str, float]:
    waits = [float(row["queue_wait_ms"]) for row in rows]
    return {
        "jobs": len(rows),
        "p50_ms": percentile(waits, 0.5),
        "p99_ms": percentile(waits, 0.99),
        "max_ms": max(waits),
    }


def measure(
    *, url: str, heavy_key: str, light_key: str, redis_url: str, heavy: int, light: int, concurrency: int
) -> dict[str, Any]:
    """Run the scenario against a running service whose workers serve `jobs`; the queue waits of both users."""
    connection = Redis.from_url(redis_url)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with (
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {heavy_key}"}, timeout=60, limits=limits) as h,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {light_key}"}, timeout=60) as lc,
    ):
        suspend(connection)
        try:
            with ThreadPoolExecutor(concurrency) as pool:
                heavy_ids = set(pool.map(lambda i: _submit(h, "heavy", i), range(heavy)))
        finally:
            resume(connection)
        light_ids = {_submit(lc, "light", i) for i in range(light)}
        _wait_drained([h, lc], timeout=600)
        heavy_rows, light_rows = _rows(h, heavy_ids), _rows(lc, light_ids)
    last_light_start = max(datetime.fromisoformat(row["started_at"]) for row in light_rows)
    after = sum(datetime.fromisoformat(row["started_at"]) > last_light_start for row in heavy_rows)
    return {
        "heavy": _waits(heavy_rows),
        "light": _waits(light_rows),
        "heavy_started_after_light_done": after,
        "succeeded": sum(row["status"] == "succeeded" for row in heavy_rows + light_rows),
    }


def _light_key(stack: Stack) -> str:
    stack.manage("shell", "-c", f"from accounts.models import User; User.objects.create_user('{LIGHT_USER}')")
    stack.manage("grant_credits", LIGHT_USER, "1000000")
    return stack.manage("create_api_key", LIGHT_USER).strip().splitlines()[-1]


def run(*, fairness: bool, args: argparse.Namespace) -> dict[str, Any]:
    env = {"QUEUE_FAIRNESS": str(fairness).lower(), "QUEUE_ADMISSION_DEPTH": str(10 * (args.heavy + args.light))}
    topology = Topology(worker_queues=(("jobs",),) * args.workers)
    with running_stack(topology=topology, redis_url=args.redis_url, env=env) as stack:
        for endpoint in ("jobs.async", "jobs.read"):
            stack.manage("policy", "set", endpoint, *UNLIMITED)
        stack.manage("policy", "set", "kind.hash", "cache_algorithm=none")
        started = time.monotonic()
        result = measure(
            url=stack.url,
            heavy_key=stack.api_key,
            light_key=_light_key(stack),
            redis_url=args.redis_url,
            heavy=args.heavy,
            light=args.light,
            concurrency=args.c,
        )
    return {"fairness": fairness, "seconds": round(time.monotonic() - started, 1), **result}


def format_table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| fairness | light p50 | light p99 | heavy p50 | heavy p99 | heavy jobs started after the light's last |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        light, heavy = r["light"], r["heavy"]
        lines.append(
            f"| {'on' if r['fairness'] else 'off'} | {light['p50_ms']:.0f} ms | {light['p99_ms']:.0f} ms "
            f"| {heavy['p50_ms']:.0f} ms | {heavy['p99_ms']:.0f} ms | {r['heavy_started_after_light_done']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heavy", type=int, default=5000, help="jobs of the heavy user")
    parser.add_argument("--light", type=int, default=50, help="jobs of the light user, after the heavy burst")
    parser.add_argument("--workers", type=int, default=2, help="RQ workers on the jobs pool")
    parser.add_argument("-c", type=int, default=20, help="concurrency of the heavy burst")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9", help="a Redis database it may flush")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    results = [run(fairness=fairness, args=args) for fairness in (True, False)]
    print(format_table(results))
    on, off = results
    print(
        f"light p50 off/on: {off['light']['p50_ms'] / max(on['light']['p50_ms'], 1):.0f}x, "
        f"p99 off/on: {off['light']['p99_ms'] / max(on['light']['p99_ms'], 1):.0f}x"
    )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()

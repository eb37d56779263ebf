"""Sync requests/s, async end-to-end jobs/s and per-request overhead for `hash` (iterations=1000).

Method: a fresh stack (bench/stack.py: gunicorn 2x16 threads + 2 SimpleWorkers, SQLite unless
BENCH_DATABASE_URL is set), limits lifted for the bench user's endpoints, then N requests at concurrency C
from a thread pool. Sync: wall-clock requests/s, and overhead = request latency - the job's run_ms
(median, p95), at concurrency C and one at a time. Async: N submissions, then time from the first submission to the last job's finished_at
(from the export endpoint), i.e. end-to-end jobs/s including queueing and the workers.

    .venv/bin/python -m bench.throughput [-n 400] [-c 20]
"""

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx

from bench.stack import running_stack

SERIAL_N = 100
"""Requests sent one at a time: their overhead is the service's own, without queueing behind others."""
BODY = {"kind": "hash", "input": {"data": "benchmark", "iterations": 1000}}
UNLIMITED = [
    "rate_limit_algorithm=none",
    "max_concurrent_per_user=0",
    "max_concurrent_global=0",
    "queue_max_depth=100000",
]


def last_finished_s(rows: list[dict[str, Any]]) -> float:
    """The latest `finished_at` of exported job rows, as a Unix time."""
    return max(datetime.fromisoformat(row["finished_at"].replace("Z", "+00:00")).timestamp() for row in rows)


def exported_when_idle(client: httpx.Client, *, poll_interval: float, timeout: float) -> list[dict[str, Any]]:
    """Every job's exported row, once no async job is queued or running (or `timeout` seconds have passed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [
            client.get("/api/v1/jobs/", params={"mode": "async", "status": status, "page_size": 1})
            for status in ("queued", "running")
        ]
        if not any(response.json()["results"] for response in busy):
            break
        time.sleep(poll_interval)
    export = client.get("/api/v1/jobs/export/", params={"format": "jsonl"})
    return [json.loads(line) for line in export.text.splitlines()]  # lines: a row's strings may hold spaces


def _fire(client: httpx.Client, path: str, n: int, concurrency: int) -> tuple[float, list[tuple[float, dict]]]:
    def one(i: int) -> tuple[float, dict]:
        started = time.perf_counter()
        response = client.post(path, json={**BODY, "input": {**BODY["input"], "data": f"benchmark-{i}"}})
        elapsed = time.perf_counter() - started
        response.raise_for_status()
        return elapsed, response.json()

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(n)))
    return time.perf_counter() - started, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=400)
    parser.add_argument("-c", type=int, default=20)
    args = parser.parse_args()
    with running_stack() as stack:
        for endpoint in ("jobs.sync", "jobs.async"):
            stack.manage("policy", "set", endpoint, *UNLIMITED)
        stack.manage("policy", "set", "kind.hash", "cache_algorithm=none")
        headers = {"Authorization": f"Bearer {stack.api_key}"}
        limits = httpx.Limits(max_connections=args.c, max_keepalive_connections=args.c)
        with httpx.Client(base_url=stack.url, headers=headers, timeout=60, limits=limits) as client:
            _fire(client, "/api/v1/jobs/sync/", args.c, args.c)  # warm-up
            _, serial_results = _fire(client, "/api/v1/jobs/sync/", SERIAL_N, 1)
            sync_wall, sync_results = _fire(client, "/api/v1/jobs/sync/", args.n, args.c)
            async_started = time.time()
            _fire(client, "/api/v1/jobs/async/", args.n, args.c)
            rows = exported_when_idle(client, poll_interval=0.2, timeout=300)
    async_rows = [row for row in rows if row["mode"] == "async"]
    assert all(row["status"] == "succeeded" for row in async_rows), "an async job did not succeed"
    last_finished = last_finished_s(async_rows)
    latencies_ms = [elapsed * 1000 for elapsed, _ in sync_results]
    overhead_ms = sorted(elapsed * 1000 - body["run_ms"] for elapsed, body in sync_results)
    serial_overhead_ms = sorted(elapsed * 1000 - body["run_ms"] for elapsed, body in serial_results)
    run_ms = [body["run_ms"] for _, body in sync_results]
    print(f"hash iterations=1000, n={args.n}, concurrency={args.c}")
    print(f"  sync   {args.n / sync_wall:8.1f} requests/s   latency p50 {statistics.median(latencies_ms):.1f} ms")
    print(f"  async  {len(async_rows) / (last_finished - async_started):8.1f} jobs/s end to end")
    print(f"  kind run time p50 {statistics.median(run_ms):.1f} ms")
    for label, values in ((f"concurrency {args.c}", overhead_ms), ("one at a time", serial_overhead_ms)):
        print(
            f"  per-request overhead (latency - run_ms), {label}: p50 {statistics.median(values):.1f} ms,"
            f" p95 {values[int(0.95 * (len(values) - 1))]:.1f} ms"
        )


if __name__ == "__main__":
    main()

"""Async end-to-end jobs/s of Jobsite against raw RQ running the same function on the same workers, and heavy
work (`hash`, 100 000 iterations) against hashlib alone on the same cores (issue 11).

Method: for each job-worker count W, a fresh stack (bench/stack.py: gunicorn 2 x 8 threads, W SimpleWorkers on
`jobs`, limits lifted, result cache off, admission bound above N). Jobsite end to end: N async `hash`
submissions through the API at concurrency C, jobs/s = N / (last job's finished_at - first submission);
in batches: the same N submitted as batches of --batch-size requests (POST /api/v1/batches/, C at a time);
workers' side: the same with the workers suspended (RQ's suspension) while the N are submitted, timed from the
moment every worker has claimed a job after their resumption, counting the jobs started from then. Raw RQ: the
same N calls of the kind's own function (jobs.kinds.hash.compute_hash) enqueued on the same queue from C threads
and run by the same W workers, jobs/s = N / (last RQ ended_at - first enqueue). Heavy: Jobsite async with
100 000 iterations (or --heavy-iterations) on the default worker count (end to end, and the workers' side as
above) against the same loop in a multiprocessing pool of as many processes as cores (no Jobsite, no RQ), run
before and after Jobsite's (the mean is the reference); with the CPU each process spent per heavy job end to end
(/proc), against the hash alone.

    .venv/bin/python -m bench.async_throughput [--workers 1 2 3 4] [-n 400] [-c 20] [--heavy-n 40]
        [--heavy-iterations 100000] [--batch-size 20] [--database-url postgres://...]
        [--redis-url redis://127.0.0.1:6379/7] [--json FILE]
"""

import argparse
import hashlib
import json
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from redis import Redis
from rq import Queue
from rq.suspension import resume, suspend

from bench.stack import Stack, Topology, process_cpu_s, running_stack
from bench.throughput import UNLIMITED, exported_when_idle, last_finished_s
from jobsite.sizing import cpu_cores, default_job_workers

LIGHT_ITERATIONS = 1000
"""The original benchmark's job: 1000 sha256 rounds (~1.5 ms)."""
HEAVY_ITERATIONS = 100_000
"""Issue 11's heavy work: ~0.15 s of CPU per job on the issue's machine, ~40 ms on this one's."""
POLL_INTERVAL = 1.0
"""Seconds between the bench's checks for the end of a run. Rates come from recorded timestamps (finished_at,
RQ's ended_at), so the interval decides only when to stop looking; every 0.1 s, the checks (two job lists, or
N RQ job reads) took ~15 ms of the cores per heavy job from the workers they measure."""


def jobsite_jobs_per_s(
    stack: Stack,
    *,
    n: int,
    concurrency: int,
    iterations: int,
    redis_url: str,
    drain: bool = False,
    callback_url: str = "",
    batch_size: int = 1,
) -> float:
    """End to end (from the first submission), or with `drain` the workers' side alone: the jobs are
    submitted while RQ's workers are suspended, and timed once every worker runs (_all_workers_busy_rate). With a
    `callback_url` each job has a webhook, whose first attempt its worker makes. With a `batch_size` above 1, the
    jobs are submitted as batches of that many requests (POST /api/v1/batches/, no webhooks), so a request's cost
    is shared by its jobs."""
    connection = Redis.from_url(redis_url)
    if drain:
        suspend(connection)
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(base_url=stack.url, headers=headers, timeout=60, limits=limits) as client:

        def job_request(i: int) -> dict[str, Any]:
            return {
                "kind": "hash",
                "input": {"data": f"async-{iterations}-{i}-{time.time()}", "iterations": iterations},
            }

        def submit(i: int) -> list[str]:
            if batch_size > 1:
                requests = [job_request(j) for j in range(i, min(i + batch_size, n))]
                response = client.post("/api/v1/batches/", json={"requests": requests})
                response.raise_for_status()
                return response.json()["job_ids"]
            body = job_request(i)
            if callback_url:
                body["callback_url"] = callback_url
            response = client.post("/api/v1/jobs/async/", json=body)
            response.raise_for_status()
            return [response.json()["id"]]

        started = time.time()
        with ThreadPoolExecutor(concurrency) as pool:
            ids = {job_id for job_ids in pool.map(submit, range(0, n, batch_size)) for job_id in job_ids}
        if drain:
            resumed = time.time()
            resume(connection)
        rows = exported_when_idle(client, poll_interval=POLL_INTERVAL, timeout=600)
    done = [row for row in rows if row["id"] in ids]
    assert len(done) == n and all(row["status"] == "succeeded" for row in done), "an async job did not succeed"
    if drain:
        return _all_workers_busy_rate(stack, ids, resumed=resumed)
    return n / (last_finished_s(done) - started)


def _all_workers_busy_rate(stack: Stack, ids: set[str], *, resumed: float) -> float:
    """Jobs/s of a drain from the moment every worker had claimed a job after the resumption: a suspended RQ
    worker looks for its resumption once a second, so the workers wake up to a second apart, and timing from the
    resumption counted that wait against them. Jobs started before that moment are not counted: a worker already
    waiting on the queue when the suspension came takes one job before it sees the suspension."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
        json.dump(sorted(ids), file)
        file.flush()
        rows = json.loads(
            stack.manage(
                "shell",
                "-c",
                "import json\n"
                "from jobs.models import Job\n"
                f"ids = json.load(open({file.name!r}))\n"
                "print(json.dumps([(job.worker_name, job.started_at.timestamp(), job.finished_at.timestamp())"
                " for job in Job.objects.filter(pk__in=ids)]))",
            ).splitlines()[-1]
        )
    return all_workers_busy_rate(rows, resumed=resumed)


def all_workers_busy_rate(runs: list[tuple[str, float, float]], *, resumed: float) -> float:
    """Jobs/s of these runs (worker, started_at, finished_at) from the moment every worker that ran one after
    `resumed` had started its first, counting the runs started from then."""
    first_claims: dict[str, float] = {}
    for worker, started_at, _ in runs:
        if started_at >= resumed:
            first_claims[worker] = min(started_at, first_claims.get(worker, started_at))
    all_busy = max(first_claims.values())
    counted = [finished_at for _, started_at, finished_at in runs if started_at >= all_busy]
    return len(counted) / (max(counted) - all_busy)


def _raw_rq_jobs_per_s(redis_url: str, *, n: int, concurrency: int, iterations: int) -> float:
    queue = Queue("jobs", connection=Redis.from_url(redis_url))
    started = time.time()
    with ThreadPoolExecutor(concurrency) as pool:
        rq_jobs = list(
            pool.map(
                lambda i: queue.enqueue(
                    "jobs.kinds.hash.compute_hash", f"raw-{iterations}-{i}-{time.time()}", iterations
                ),
                range(n),
            )
        )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if all(job.get_status(refresh=True) == "finished" for job in rq_jobs):
            break
        time.sleep(POLL_INTERVAL)
    for job in rq_jobs:
        job.refresh()  # ended_at
    return n / (max(job.ended_at.timestamp() for job in rq_jobs) - started)


def _hash_alone(data: str, iterations: int) -> str:
    """The work of one `hash` job and nothing else (the loop of jobs.kinds.hash.compute_hash)."""
    current = hashlib.sha256(data.encode()).hexdigest()
    for i in range(iterations):
        current = hashlib.sha256(f"{current}:{i}".encode()).hexdigest()
    return current


def _hashlib_jobs_per_s(*, n: int, iterations: int) -> float:
    with multiprocessing.Pool(cpu_cores()) as pool:
        started = time.perf_counter()
        pool.starmap(_hash_alone, [(f"alone-{i}", iterations) for i in range(n)])
        return n / (time.perf_counter() - started)


def _cpu_by_process(stack: Stack) -> dict[str, float]:
    """CPU seconds so far: gunicorn (the acknowledgements, and the harness's polls and final export), the job
    workers, and this harness (its submitting threads; its children, the stack, not counted)."""
    harness = os.times()
    return {
        "gunicorn": process_cpu_s(stack.web_pid),
        "job workers": process_cpu_s(*stack.worker_pids),
        "harness": harness.user + harness.system,
    }


def job_workers_stack(workers: int, args: argparse.Namespace, env: dict[str, str] | None = None) -> Any:
    topology = Topology(threads=8, worker_queues=(("jobs",),) * workers)
    # The drain measure queues all N jobs before any runs: the admission bound must not refuse them.
    env = {"QUEUE_ADMISSION_DEPTH": str(10 * args.n), **(env or {})}
    return running_stack(topology=topology, redis_url=args.redis_url, database_url=args.database_url, env=env)


def unlimited(stack: Stack) -> None:
    for endpoint in ("jobs.async", "jobs.batch"):
        stack.manage("policy", "set", endpoint, *UNLIMITED)
    stack.manage("policy", "set", "kind.hash", "cache_algorithm=none")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("-n", type=int, default=400)
    parser.add_argument("-c", type=int, default=20)
    parser.add_argument("--heavy-n", type=int, default=40)
    parser.add_argument(
        "--heavy-iterations",
        type=int,
        default=HEAVY_ITERATIONS,
        help="iterations of a heavy job (the issue's machine took ~0.15 s for 100 000; this CPU hashes ~3.5x faster)",
    )
    parser.add_argument("--batch-size", type=int, default=20, help="requests per batch of the batched end to end")
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/7")
    parser.add_argument("--json")
    args = parser.parse_args()
    report: dict[str, Any] = {"cores": cpu_cores(), "light": {}, "heavy": {}}
    for workers in args.workers:
        with job_workers_stack(workers, args) as stack:
            unlimited(stack)
            light = {"n": args.n, "concurrency": args.c, "iterations": LIGHT_ITERATIONS, "redis_url": args.redis_url}
            jobsite_jobs_per_s(stack, **{**light, "n": args.c})  # warm-up
            jobsite = jobsite_jobs_per_s(stack, **light)
            drained = jobsite_jobs_per_s(stack, **light, drain=True)
            batched = jobsite_jobs_per_s(stack, **light, batch_size=args.batch_size)
            raw = _raw_rq_jobs_per_s(args.redis_url, n=args.n, concurrency=args.c, iterations=LIGHT_ITERATIONS)
        report["light"][workers] = {
            "jobsite": jobsite,
            "jobsite_drain": drained,
            "jobsite_batches": batched,
            "raw_rq": raw,
        }
        print(
            f"W={workers}: Jobsite end to end {jobsite:7.1f} jobs/s ({jobsite / raw:.2f}x raw RQ), workers' side"
            f" {drained:7.1f} jobs/s ({drained / raw:.2f}x), in batches of {args.batch_size} {batched:7.1f} jobs/s"
            f" ({batched / raw:.2f}x), raw RQ {raw:7.1f} jobs/s",
            flush=True,
        )
    workers = default_job_workers()
    # Before and after: this VM's speed drifts from one minute to the next; their mean is the reference.
    alone_before = _hashlib_jobs_per_s(n=args.heavy_n, iterations=args.heavy_iterations)
    with job_workers_stack(workers, args) as stack:
        unlimited(stack)
        heavy = {
            "n": args.heavy_n,
            "concurrency": args.c,
            "iterations": args.heavy_iterations,
            "redis_url": args.redis_url,
        }
        cpu_before = _cpu_by_process(stack)
        jobsite = jobsite_jobs_per_s(stack, **heavy)
        cpu_per_job = {
            name: 1000 * (after - cpu_before[name]) / args.heavy_n for name, after in _cpu_by_process(stack).items()
        }
        drained = jobsite_jobs_per_s(stack, **heavy, drain=True)
    started = time.process_time()
    _hash_alone("one job", args.heavy_iterations)
    cpu_per_job["the hash alone, in this process"] = 1000 * (time.process_time() - started)
    alone_after = _hashlib_jobs_per_s(n=args.heavy_n, iterations=args.heavy_iterations)
    alone = (alone_before + alone_after) / 2
    report["heavy"] = {
        "workers": workers,
        "iterations": args.heavy_iterations,
        "jobsite": jobsite,
        "jobsite_drain": drained,
        "hashlib": alone,
        "hashlib_before_after": [alone_before, alone_after],
        "ratio": jobsite / alone,
        "ratio_drain": drained / alone,
        "cpu_ms_per_job": cpu_per_job,
    }
    print(
        f"heavy ({args.heavy_iterations} iterations), W={workers}: Jobsite end to end {jobsite:.2f} jobs/s ({jobsite / alone:.2f}x),"
        f" workers' side {drained:.2f} jobs/s ({drained / alone:.2f}x), hashlib alone on {cpu_cores()} processes"
        f" {alone:.2f} jobs/s (before {alone_before:.2f}, after {alone_after:.2f})"
    )
    print("  CPU per heavy job, end to end:", ", ".join(f"{name} {ms:.1f} ms" for name, ms in cpu_per_job.items()))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)


if __name__ == "__main__":
    main()

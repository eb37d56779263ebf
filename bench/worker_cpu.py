"""CPU per job of the job workers, draining queued jobs (issue 11).

Method: a stack (bench/stack.py) with W job workers of the run command's class on `jobs`, limits lifted and the
result cache off (bench/async_throughput.py's); N async `hash` jobs are submitted while RQ's workers are
suspended, then they resume and drain them. Per round: the workers' CPU (user + system from /proc, their
processes and children) over the submission and the drain, divided by N (suspended, they idle), and the drain's
jobs/s. At 1 iteration the figure is what RQ and Jobsite cost a job. With `--callbacks` every job has a webhook to
a receiver in this process (loadgen's, answering 200 at once), so the figure includes the first delivery attempt
the worker makes; the round ends when every callback is in.

    .venv/bin/python -m bench.worker_cpu [-n 1500] [--iterations 1] [--workers 2] [--rounds 2] [--callbacks]
        [--database-url postgres://...] [--redis-url redis://127.0.0.1:6379/7]
"""

import argparse
import contextlib
import time

from bench.async_throughput import job_workers_stack, jobsite_jobs_per_s, unlimited
from bench.stack import process_cpu_s
from loadgen.receiver import WebhookReceiver

CALLBACKS_WAIT = 60.0
"""Seconds a round waits for its last callbacks after the jobs are final."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1500)
    parser.add_argument("-c", type=int, default=20, help="concurrency of the submissions")
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--callbacks", action="store_true", help="every job has a webhook to a local receiver")
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/7")
    args = parser.parse_args()
    env = {"CALLBACK_ALLOW_PRIVATE": "true"} if args.callbacks else {}
    with (
        WebhookReceiver() if args.callbacks else contextlib.nullcontext() as receiver,
        job_workers_stack(args.workers, args, env=env) as stack,
    ):
        unlimited(stack)
        for index in range(args.rounds):
            before = process_cpu_s(*stack.worker_pids)
            rate = jobsite_jobs_per_s(
                stack,
                n=args.n,
                concurrency=args.c,
                iterations=args.iterations,
                redis_url=args.redis_url,
                drain=True,
                callback_url=receiver.url if receiver else "",
            )
            if receiver:
                deadline = time.monotonic() + CALLBACKS_WAIT
                while len(receiver.arrivals) < args.n and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert len(receiver.arrivals) == args.n, f"{len(receiver.arrivals)} of {args.n} callbacks came in"
                receiver.reset()
            per_job = 1000 * (process_cpu_s(*stack.worker_pids) - before) / args.n
            print(
                f"round {index + 1}: {per_job:.2f} ms of worker CPU per job, drained at {rate:.1f} jobs/s", flush=True
            )


if __name__ == "__main__":
    main()

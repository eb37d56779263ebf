"""Which RQ worker class should run Jobsite's jobs? Throughput of 200 trivial jobs, forking vs simple.

Method: enqueue N no-op jobs (`operator.add`), run `rq worker --burst` with each class in turn on the same
Redis database, and take throughput from RQ's own timestamps (first job started -> last job ended), so that
process start-up is not counted. Both classes run in the same invocation; the ratio is what to compare.

    .venv/bin/python -m bench.worker_class [-n 200] [--redis redis://127.0.0.1:6379/9]
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

from redis import Redis
from rq import Queue
from rq.job import Job

CLASSES = {"Worker (fork per job)": "rq.worker.Worker", "SimpleWorker (in process)": "rq.worker.SimpleWorker"}


def measure(redis_url: str, worker_class: str, n: int) -> float:
    redis = Redis.from_url(redis_url)
    redis.flushdb()
    queue = Queue("bench", connection=redis)
    jobs = [queue.enqueue("operator.add", i, 1, result_ttl=600) for i in range(n)]
    rq_bin = Path(sys.executable).with_name("rq")
    subprocess.run(
        [rq_bin, "worker", "--burst", "--url", redis_url, "--worker-class", worker_class, "bench"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    fetched = Job.fetch_many([job.id for job in jobs], connection=redis)
    assert all(job is not None and job.return_value() is not None for job in fetched), "a job did not finish"
    started = min(job.started_at for job in fetched)
    ended = max(job.ended_at for job in fetched)
    return n / (ended - started).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/9")
    args = parser.parse_args()
    results = {}
    for label, worker_class in CLASSES.items():
        results[label] = measure(args.redis, worker_class, args.n)
        time.sleep(0.2)
    Redis.from_url(args.redis).flushdb()
    baseline = results["Worker (fork per job)"]
    print(f"{args.n} trivial jobs, one worker process")
    for label, rate in results.items():
        print(f"  {label:<28} {rate:8.1f} jobs/s   x{rate / baseline:.2f}")


if __name__ == "__main__":
    main()

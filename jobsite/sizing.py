"""How many processes of each kind a host runs by default, sized to its cores (the environment overrides them).

Standard library only: the launcher (jobsite/__main__.py) reads it before .venv exists. gunicorn.conf.py,
the launcher, the settings (the admission bound of the jobs queue) and the benchmarks size from here, so the
processes of one host agree on the counts. Measured on 2 cores in bench/README.md ("Process sizing").
"""

import os
import re
from collections.abc import Mapping

JOB_WORKERS_PER_CORE = 1
"""RQ job workers per core: one SimpleWorker keeps a core busy (the job runs in the worker's own process,
waiting only on short database writes); more add context switches, not throughput (bench/README.md)."""

MIN_JOB_WORKERS = 2
"""At least two, so that one worker busy with a long job (or restarting) never stops the queue."""

ADMISSION_PER_JOB_WORKER = 2
"""Default bound of waiting jobs per job worker (QUEUE_ADMISSION_DEPTH): under saturation a job accepted waits
behind at most this many per worker (2 hash jobs of 1000 iterations: ~15 ms). Acknowledgements waiting for room
are woken by the worker that takes a job, so a short queue does not run dry: against 4 per worker, under the
original's burst, time to callback p50 -17%, the same jobs per second; 1 per worker: no better (bench/README.md)."""

CALLBACK_WORKERS = 3
"""Webhook retry workers: more than CALLBACK_MAX_PER_HOST (2), so one slow receiver never holds them all.
Few are needed: the first attempt of every webhook is made by the job worker itself."""


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, as a container's cpuset sets it), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_web_workers() -> int:
    """gunicorn processes: one per core, at least 2 (WEB_CONCURRENCY overrides, gunicorn.conf.py)."""
    return max(2, cpu_cores())


def default_job_workers() -> int:
    """RQ workers on the jobs queue: JOB_WORKERS_PER_CORE per core, at least MIN_JOB_WORKERS (RQ_WORKERS overrides)."""
    return max(MIN_JOB_WORKERS, JOB_WORKERS_PER_CORE * cpu_cores())


DEFAULT_POOL = "jobs"
"""The worker pool (and RQ queue) of every kind whose settings name no other: today's single jobs queue."""

RESERVED_QUEUES = frozenset({"callbacks", "maintenance"})
"""RQ queues of our own that no pool may be named after."""

POOL_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
"""What a pool's name may be: it names an RQ queue, Redis keys and Prometheus labels."""


def parse_pools(raw: str, *, default_size: int) -> dict[str, int]:
    """RQ_POOLS (`cpu:2,io:4`) as {pool: worker processes}, the default pool first (default_size unless listed).

    Strict: a malformed entry, a repeated or reserved name, or a size below 1 raises ValueError.
    """
    pools = {DEFAULT_POOL: default_size}
    named: set[str] = set()
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        name, colon, size = item.partition(":")
        if not colon or not POOL_NAME.fullmatch(name) or not size.isdigit():
            raise ValueError(f"{item!r} is not name:size (a name of a-z, 0-9, _ and a size >= 1), e.g. cpu:2")
        if name in named or name in RESERVED_QUEUES:
            raise ValueError(f"pool {name!r} is {'named twice' if name in named else 'a reserved queue name'}")
        if int(size) < 1:
            raise ValueError(f"pool {name!r} needs at least 1 worker")
        named.add(name)
        pools[name] = int(size)
    return pools


def job_pools(environ: Mapping[str, str]) -> dict[str, int]:
    """The worker pools of this deployment from RQ_POOLS, the default pool sized by RQ_WORKERS (or the cores)."""
    workers = (environ.get("RQ_WORKERS") or "").strip()
    raw = (environ.get("RQ_POOLS") or "").strip()
    if workers and any(item.strip().startswith(f"{DEFAULT_POOL}:") for item in raw.split(",")):
        raise ValueError(f"RQ_WORKERS and RQ_POOLS both size the {DEFAULT_POOL} pool: set it in one place")
    if workers and not (workers.isdigit() and int(workers) >= 1):
        raise ValueError(f"RQ_WORKERS={workers!r}: must be a whole number >= 1")
    return parse_pools(raw, default_size=int(workers) if workers else default_job_workers())

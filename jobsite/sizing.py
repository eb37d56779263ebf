"""How many processes of each kind a host runs by default, sized to its cores (the environment overrides them).

Standard library only: the launcher (jobsite/__main__.py) reads it before .venv exists. gunicorn.conf.py,
the launcher, the settings (the admission bound of the jobs queue) and the benchmarks size from here, so the
processes of one host agree on the counts. Measured on 2 cores in bench/README.md ("Process sizing").
"""

import os

JOB_WORKERS_PER_CORE = 1
"""RQ job workers per core: one SimpleWorker keeps a core busy (the job runs in the worker's own process,
waiting only on short database writes); more add context switches, not throughput (bench/README.md)."""

MIN_JOB_WORKERS = 2
"""At least two, so that one worker busy with a long job (or restarting) never stops the queue."""

ADMISSION_PER_JOB_WORKER = 16
"""Default bound of waiting jobs per job worker (QUEUE_ADMISSION_DEPTH): enough that workers never starve
between acknowledgements and that a burst of submissions is taken at once, few enough that a job accepted
under saturation waits a fraction of a second (16 hash jobs of 1000 iterations take ~0.1 s on one worker)."""

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

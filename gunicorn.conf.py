"""gunicorn settings of the web process (Procfile, compose.yaml and `python3 -m jobsite run` all load this file).

Sizing: one process per CPU core (at least 2, so one restarting never leaves the host without a server), each
with GUNICORN_THREADS threads (gthread). Python runs one thread of Python code at a time per process (the GIL),
so more processes than cores only add memory and database connections; the threads cover the time requests
spend waiting on PostgreSQL, Redis and sync `fetch` jobs. Each thread may hold a database connection
(CONN_MAX_AGE), so a host opens up to workers x threads connections: 2 cores x 8 = 16; put PgBouncer in front
of PostgreSQL before web hosts x that nears max_connections (docs/operations.md).

Metrics: every process of the host writes its counters to PROMETHEUS_MULTIPROC_DIR (default var/prometheus),
created here; files of processes no longer alive are removed when gunicorn starts and when a worker exits, so
a restart never doubles counts nor drops the live processes' (RQ workers of the same host share the directory).
"""

import contextlib
import os
from pathlib import Path

from prometheus_client import multiprocess

from jobsite.env import env_bool, env_int, env_list, env_str
from jobsite.sizing import default_web_workers

METRICS_DIR = Path(env_str("PROMETHEUS_MULTIPROC_DIR", str(Path(__file__).resolve().parent / "var" / "prometheus")))
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(METRICS_DIR)  # read by prometheus_client in the workers
METRICS_DIR.mkdir(parents=True, exist_ok=True)

wsgi_app = "jobsite.wsgi:application"
bind = env_list("BIND", [f"0.0.0.0:{env_int('PORT', 8000, minimum=1)}"])
workers = env_int("WEB_CONCURRENCY", default_web_workers(), minimum=1)
worker_class = "gthread"
threads = env_int("GUNICORN_THREADS", 8, minimum=1)
timeout = env_int("GUNICORN_TIMEOUT", 60, minimum=1)
"""Seconds a worker may stay silent; IDEMPOTENCY_LOCK_TIMEOUT assumes a request never outlives it."""
graceful_timeout = 30
keepalive = 5
max_requests = 10_000
max_requests_jitter = 1_000
"""Workers are recycled now and then (jittered, so not all at once), bounding the damage of any slow leak."""
accesslog = "-" if env_bool("GUNICORN_ACCESS_LOG", True) else None
"""One line per request on stdout; GUNICORN_ACCESS_LOG=false drops it where the load balancer logs requests."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def on_starting(server: object) -> None:
    """Drop the metric files of processes that are gone (an earlier run); live processes keep theirs."""
    for path in METRICS_DIR.glob("*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def child_exit(server: object, worker: object) -> None:
    """prometheus_client's rule for multiprocess mode: a dead worker's live gauges stop counting."""
    multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]

"""Start a throwaway Jobsite (gunicorn + RQ workers) on its own database and Redis DB, for benchmarks."""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from jobsite.__main__ import WORKER_CLASS
from jobsite.sizing import CALLBACK_WORKERS, default_job_workers

ROOT = Path(__file__).resolve().parent.parent
BENCH_USER = "bench"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Topology:
    """The processes of a stack: gunicorn gthread workers x threads, one RQ worker (the run command's class, a
    SimpleWorker) per queue list, rq cron."""

    web_workers: int = 2
    threads: int = 16
    worker_queues: tuple[tuple[str, ...], ...] = (("jobs", "callbacks"), ("jobs", "callbacks"))
    cron: bool = False


BENCH_TOPOLOGY = Topology()
"""The benchmarks' own default: more threads, and every worker on jobs and callbacks alike."""
RUN_COMMAND = Topology(
    threads=8,
    worker_queues=(("jobs", "maintenance"),) * default_job_workers() + (("callbacks",),) * CALLBACK_WORKERS,
    cron=True,
)
"""What `python3 -m jobsite run` starts (jobsite/__main__.py run_service, RQ_WORKERS and RQ_CALLBACK_WORKERS unset)."""


@dataclass
class Stack:
    url: str
    api_key: str
    env: dict[str, str]
    web_pid: int = 0
    """gunicorn's master."""
    worker_pids: tuple[int, ...] = ()
    """The RQ workers, in Topology.worker_queues' order."""

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True
        )
        if done.returncode != 0:  # say why: a benchmark that stops on a bare exit status leaves nothing to go on
            raise RuntimeError(f"manage.py {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
        return done.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gunicorn_command(port: int, *, workers: int, threads: int) -> list[str]:
    """A web process: gunicorn gthread, workers x threads, on 127.0.0.1:port (stacks, the bare reference, faults)."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "jobsite.wsgi",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--worker-class",
        "gthread",
    ]


def process_cpu_s(*roots: int) -> float:
    """User + system CPU seconds, so far, of these processes and their live descendants (/proc)."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            times[int(entry)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    total, pending = 0.0, list(roots)
    while pending:
        pid = pending.pop()
        total += times.get(pid, 0.0)
        pending.extend(children.get(pid, []))
    return total


def _reset_database(stack: Stack) -> None:
    """A PostgreSQL database is reused between runs: start from an empty schema, as a fresh SQLite file does."""
    stack.manage(
        "shell",
        "-c",
        "from django.db import connection\n"
        "if connection.vendor == 'postgresql':\n"
        "    connection.cursor().execute('DROP SCHEMA public CASCADE; CREATE SCHEMA public')",
    )


@contextlib.contextmanager
def running_stack(
    *,
    topology: Topology = BENCH_TOPOLOGY,
    redis_url: str = "redis://127.0.0.1:6379/9",
    database_url: str | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """Yield a running service; its database is a fresh SQLite file unless a database URL is given
    (`database_url`, else BENCH_DATABASE_URL), whose schema is then dropped and migrated afresh."""
    scratch = Path(tempfile.mkdtemp(prefix="jobsite-bench-"))
    metrics_dir = scratch / "prometheus"
    metrics_dir.mkdir()
    database_url = database_url or os.environ.get("BENCH_DATABASE_URL")
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="jobsite.settings",
        SECRET_KEY="bench-only-secret",
        DATABASE_URL=database_url or f"sqlite:///{scratch / 'bench.sqlite3'}",
        REDIS_URL=redis_url,
        LOG_LEVEL="WARNING",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        **(env or {}),
    )
    subprocess.run(["redis-cli", "-u", redis_url, "flushdb"], check=False, capture_output=True)
    processes: list[subprocess.Popen] = []
    port = free_port()
    stack = Stack(url=f"http://127.0.0.1:{port}", api_key="", env=env)
    try:
        _reset_database(stack)
        stack.manage("migrate", "--noinput")
        stack.manage("shell", "-c", f"from accounts.models import User; User.objects.create_user('{BENCH_USER}')")
        stack.api_key = stack.manage("create_api_key", BENCH_USER).strip().splitlines()[-1]
        with contextlib.suppress(RuntimeError):
            stack.manage("grant_credits", BENCH_USER, "100000000")
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": ROOT, "env": env}
        processes.append(
            subprocess.Popen(gunicorn_command(port, workers=topology.web_workers, threads=topology.threads), **quiet)
        )
        stack.web_pid = processes[-1].pid
        for queues in topology.worker_queues:
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "manage.py",
                        "rqworker",
                        *queues,
                        "--with-scheduler",
                        "--worker-class",
                        WORKER_CLASS,
                    ],
                    **quiet,
                )
            )
        stack.worker_pids = tuple(process.pid for process in processes[1:])
        if topology.cron:
            processes.append(subprocess.Popen([sys.executable, "manage.py", "rqcron", "jobs.cron"], **quiet))
        workers = len(topology.worker_queues)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{stack.url}/healthz", timeout=1).json().get("active_workers", 0) >= workers:
                    break
            time.sleep(0.2)
        yield stack
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(scratch, ignore_errors=True)

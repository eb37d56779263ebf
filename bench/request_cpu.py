"""CPU per request of the hot routes, in this process through Django's WSGI handler (issue 11).

What one request costs the web process, without a load generator, a network or other processes' share of the
cores in the figure: a request is built as gunicorn would hand it over (a WSGI environ), run through
`jobsite.wsgi.application` (every middleware, the view, the pipeline, the response iterated and closed, so
`request_finished` runs too) on a real database and Redis, and timed with `time.process_time` (CPU of this
process: less sensitive than wall time to the other processes on a shared machine) and `time.perf_counter`.

Routes (`hash`, 1000 iterations as in the original backend's benchmark, unique data so the result cache never
answers): `compat_sync` = anonymous POST /sync, `compat_async` = anonymous POST /async with a callback URL
(compat.sync and compat.async set `auth_required=false rate_limit_algorithm=none`, as bench.versus_original
does), `api_sync` = POST /api/v1/jobs/sync/ and `api_async` = POST /api/v1/jobs/async/ with an API key
(policies as shipped), `api_sync_keyed` and `api_async_keyed` the same with a new Idempotency-Key each. No
worker runs: the jobs queue is emptied between async requests, outside the measurement, so back-pressure never
waits. `hash_only` is `compute_hash` alone, the work inside each request.

Per route: CPU per request (median and mean), wall p50, SQL statements and database round trips (with
BEGIN/COMMIT; the connection health check sends nothing on a quiet connection, jobsite.postgresql) and Redis round
trips of one request. `--profile` runs the routes once more under cProfile and prints where the CPU goes, by
package and by function.

    .venv/bin/python -m bench.request_cpu --database-url postgres://postgres@127.0.0.1:5432/h_bench \
        [--redis-url redis://127.0.0.1:6379/10] [-n 300] [--routes compat_sync api_sync] [--profile] [--json FILE]
"""

import argparse
import cProfile
import io
import itertools
import json
import os
import pstats
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

from bench.overhead import TRANSACTION_CONTROL, WARM_UP, redis_round_trips
from bench.stack import ROOT
from bench.versus_original import COMPAT_POLICY

HASH_ITERATIONS = 1000
"""The original backend's benchmark hashes with 1000 iterations."""
CALLBACK_URL = "http://127.0.0.1:8099/callback"
"""Never called: no worker runs."""
ANONYMOUS_BUDGET_LIFTED = 1_000_000_000
"""ANONYMOUS_BUDGET (1200 a minute as shipped) that no run reaches: still checked, in the same Lua call, never refusing."""
_numbers = itertools.count()


def _data() -> str:
    return f"request-cpu-{os.getpid()}-{next(_numbers)}"


@dataclass(frozen=True)
class Route:
    path: str
    body: Callable[[], dict[str, Any]]
    authenticated: bool
    queues_a_job: bool = False
    keyed: bool = False
    """Sends a new Idempotency-Key with each request."""


def _api_body() -> dict[str, Any]:
    return {"kind": "hash", "input": {"data": _data(), "iterations": HASH_ITERATIONS}}


_API_SYNC = Route("/api/v1/jobs/sync/", _api_body, True)
_API_ASYNC = Route("/api/v1/jobs/async/", _api_body, True, queues_a_job=True)

ROUTES = {
    "compat_sync": Route("/sync", lambda: {"data": _data(), "iterations": HASH_ITERATIONS}, False),
    "compat_async": Route(
        "/async",
        lambda: {"data": _data(), "iterations": HASH_ITERATIONS, "callback_url": CALLBACK_URL},
        False,
        queues_a_job=True,
    ),
    "api_sync": _API_SYNC,
    "api_async": _API_ASYNC,
    "api_sync_keyed": replace(_API_SYNC, keyed=True),
    "api_async_keyed": replace(_API_ASYNC, keyed=True),
}


def post_environ(path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
    """What gunicorn hands the application for one JSON POST (a keep-alive client on loopback)."""
    raw = json.dumps(body).encode()
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "HTTP_HOST": "127.0.0.1:8000",
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(raw)),
        "HTTP_ACCEPT": "*/*",
        "HTTP_USER_AGENT": "python-httpx/0.28.1",
        "wsgi.input": io.BytesIO(raw),
        **{f"HTTP_{name.upper().replace('-', '_')}": value for name, value in (headers or {}).items()},
    }
    setup_testing_defaults(environ)
    return environ


def _environ(route: Route, api_key: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {api_key}"} if route.authenticated else {}
    if route.keyed:
        headers["Idempotency-Key"] = _data()
    return post_environ(route.path, route.body(), headers)


def _call(application: Any, environ: dict[str, Any]) -> tuple[str, bytes]:
    statuses: list[str] = []
    result = application(environ, lambda status, headers, exc_info=None: statuses.append(status))
    try:
        body = b"".join(result)
    finally:
        result.close()  # request_finished: the connection handling gunicorn triggers
    return statuses[0], body


def _drain_jobs_queue() -> None:
    from jobs.queues import get_queue

    get_queue("jobs").empty()


def measure(application: Any, route: Route, api_key: str, n: int) -> dict[str, Any]:
    """CPU and wall time of n requests one at a time (after WARM_UP), and the round trips of the last one."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    cpu_ms, wall_ms = [], []
    for index in range(WARM_UP + n):
        environ = _environ(route, api_key)
        cpu, wall = time.process_time(), time.perf_counter()
        status, body = _call(application, environ)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        if not status.startswith(("200", "201", "202")):
            raise RuntimeError(f"{route.path} answered {status}: {body[:500]!r}")
        if index >= WARM_UP:
            cpu_ms.append(cpu * 1000)
            wall_ms.append(wall * 1000)
        if route.queues_a_job:
            _drain_jobs_queue()
    with CaptureQueriesContext(connection) as queries, redis_round_trips() as trips:
        _call(application, _environ(route, api_key))
    if route.queues_a_job:
        _drain_jobs_queue()
    statements = [query["sql"] for query in queries.captured_queries]
    return {
        "cpu_ms_median": statistics.median(cpu_ms),
        "cpu_ms_mean": statistics.fmean(cpu_ms),
        "wall_ms_p50": statistics.median(wall_ms),
        "sql_statements": sum(not s.upper().startswith(TRANSACTION_CONTROL) for s in statements),
        "database_round_trips": len(statements),
        "redis_round_trips": len(trips),
        "redis_commands": trips,
        "statements": statements,
    }


def hash_only_ms(n: int) -> float:
    """CPU of the work itself: compute_hash with HASH_ITERATIONS, median of n."""
    from jobs.kinds.hash import compute_hash

    times = []
    for _ in range(n):
        started = time.process_time()
        compute_hash(_data(), HASH_ITERATIONS)
        times.append((time.process_time() - started) * 1000)
    return statistics.median(times)


_SITE = re.compile(r"site-packages/([^/]+)")


def _package(filename: str, function: str) -> str:
    """The library (or our package) a profiled function belongs to; C functions by their own name."""
    if filename == "~":
        return f"builtin {function.strip('<>').split(' of ')[0]}"
    site = _SITE.search(filename)
    if site:
        return site.group(1).removesuffix(".py")
    path = Path(filename)
    if path.is_relative_to(ROOT):
        return path.relative_to(ROOT).parts[0]
    return "stdlib " + path.stem


def profile(application: Any, route: Route, api_key: str, n: int, top: int) -> dict[str, Any]:
    """Own CPU time (cProfile tottime) per request by package, and the heaviest functions cumulatively."""
    profiler = cProfile.Profile(time.process_time)
    environs = [_environ(route, api_key) for _ in range(n)]
    for environ in environs:
        profiler.enable()
        _call(application, environ)
        profiler.disable()
        if route.queues_a_job:
            _drain_jobs_queue()
    stats = pstats.Stats(profiler)
    by_package: dict[str, float] = defaultdict(float)
    for (filename, _, function), (_, _, own, *_) in stats.stats.items():  # type: ignore[attr-defined]
        by_package[_package(filename, function)] += own * 1000 / n
    listing = io.StringIO()
    stats.stream = listing  # type: ignore[attr-defined]
    stats.sort_stats("cumulative").print_stats(top)
    return {
        "own_ms_per_request_by_package": dict(sorted(by_package.items(), key=lambda item: -item[1])),
        "total_ms_per_request": stats.total_tt * 1000 / n,  # type: ignore[attr-defined]
        "cumulative_listing": listing.getvalue(),
    }


def _prepare(database_url: str | None, redis_url: str, scratch: Path) -> tuple[Any, str]:
    """Environment as the run command gives a web process, a migrated empty database, an API key with credits."""
    os.environ.update(
        DJANGO_SETTINGS_MODULE="jobsite.settings",
        SECRET_KEY="bench-only-secret",
        DATABASE_URL=database_url or f"sqlite:///{scratch / 'bench.sqlite3'}",
        REDIS_URL=redis_url,
        LOG_LEVEL="WARNING",
        CALLBACK_ALLOW_PRIVATE="true",
        PROMETHEUS_MULTIPROC_DIR=str(scratch / "prometheus"),
        ANONYMOUS_BUDGET=str(ANONYMOUS_BUDGET_LIFTED),
    )
    (scratch / "prometheus").mkdir(exist_ok=True)
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from accounts.models import SCOPES, User
    from accounts.services import api_key_create
    from credits.services import credit_grant
    from jobsite.redis import get_redis

    get_redis().flushdb()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    call_command("migrate", "--noinput", verbosity=0)
    user = User.objects.create_user("bench")
    _, api_key = api_key_create(owner=user, name="bench", scopes=list(SCOPES))
    credit_grant(user=user, amount=100_000_000, reason="bench")
    for name in ("compat.sync", "compat.async"):
        call_command("policy", "set", name, *COMPAT_POLICY, stdout=io.StringIO())
    from jobsite.wsgi import application

    return application, api_key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="measured requests per route")
    parser.add_argument("--database-url", help="a PostgreSQL database, its schema dropped (default: a SQLite file)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/10", help="a Redis db of its own (FLUSHed)")
    parser.add_argument("--routes", nargs="+", choices=sorted(ROUTES), default=list(ROUTES))
    parser.add_argument("--profile", action="store_true", help="also profile each route with cProfile")
    parser.add_argument("--top", type=int, default=40, help="functions listed per profile")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    load_average = {"start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="jobsite-request-cpu-") as scratch:
        application, api_key = _prepare(args.database_url, args.redis_url, Path(scratch))
        figures: dict[str, Any] = {"hash_only_cpu_ms": hash_only_ms(args.n)}
        for name in args.routes:
            figures[name] = measure(application, ROUTES[name], api_key, args.n)
        if args.profile:
            for name in args.routes:
                figures[name]["profile"] = profile(application, ROUTES[name], api_key, args.n, args.top)
    load_average["end"] = os.getloadavg()
    database = "PostgreSQL" if args.database_url else "SQLite"
    print(
        f"CPU per request, in process, n={args.n}, {database}, hash {HASH_ITERATIONS} iterations; load {load_average}"
    )
    print(f"  hash alone                 {figures['hash_only_cpu_ms']:6.2f} ms CPU")
    for name in args.routes:
        each = figures[name]
        print(
            f"  {name:<14} CPU median {each['cpu_ms_median']:6.2f} ms, mean {each['cpu_ms_mean']:6.2f} ms;"
            f" wall p50 {each['wall_ms_p50']:6.2f} ms; {each['sql_statements']} SQL statements,"
            f" {each['database_round_trips']} database round trips, {each['redis_round_trips']} Redis round trips:"
            f" {' '.join(each['redis_commands'])}"
        )
        for statement in each["statements"]:
            print(f"      {statement[:140]}")
        if "profile" in each:
            figure = each["profile"]
            print(f"  profile of {name}: {figure['total_ms_per_request']:.2f} ms per request under cProfile; own time:")
            for package, own in list(figure["own_ms_per_request_by_package"].items())[:25]:
                print(f"      {own:6.3f} ms  {package}")
            print(figure["cumulative_listing"])
    if args.json:
        args.json.write_text(json.dumps({"load_average": load_average, "n": args.n, **figures}, indent=2) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""Jobsite's compatible routes against the original backend, driven by the original's own load generator (issue 11).

Method (figures and commands in bench/README.md):
- The original backend (the FastAPI service public as github:mohityadaviitb/Consuma) is extracted with
  `git archive` from `--original` (a work tree or a bare git dir) into a temp dir, its requirements.txt
  installed in a venv of its own under ~/.cache/jobsite-bench (reused while requirements.txt is unchanged),
  and served by uvicorn on 127.0.0.1 (no --reload), its callbacks allowed to reach loopback
  (APP_CALLBACK_BLOCK_PRIVATE_IPS=false: the receiver is on this machine).
- Jobsite runs in the topology of its run command (bench/stack.py RUN_COMMAND) on a database and a Redis
  database of its own, the compat routes anonymous with no rate limit, CALLBACK_ALLOW_PRIVATE=true.
- The load is the original's `load_generator.py`, copied with only its 0.0.0.0 bind patched to 127.0.0.1,
  run by the original venv's python with `--mode both` (sync phase, then async phase) against each target
  in turn, A B A B ... for `--rounds`. A small wrapper (GENERATOR_TIMER) runs the generator's own main()
  unchanged and times each phase from outside: sync = its N requests; async = from the phase's start to
  the last awaited callback (the generator waits for callbacks up to 30 s).
- Figures per target and round are parsed from the generator's printed report; the table shows each
  target's range over rounds and the ratio Jobsite / original of the medians over rounds, beside the
  issue's target for it.

    .venv/bin/python -m bench.versus_original [--original PATH] [-n 400] [-c 20] [--rounds 2]
        [--database-url postgres://postgres@127.0.0.1:5432/h_bench] [--json FILE]
"""

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.stack import RUN_COMMAND, free_port, running_stack

DEFAULT_ORIGINAL = Path("/work/.mirror/mohityadaviitb+Consuma/repo")
ORIGINAL_VENV = Path.home() / ".cache" / "jobsite-bench" / "original-venv"
"""Outside the repo, reused while the original's requirements.txt is unchanged."""

COMPAT_POLICY = ["auth_required=false", "rate_limit_algorithm=none"]
"""Anonymous, no rate limit: how the original served its routes. Set on compat.sync and compat.async."""

FREE_BUDGET_LIFTED = 1_000_000
"""CALLBACK_FREE_BUDGET of the stack: more webhook attempts per minute than any run makes."""

ANONYMOUS_BUDGET_LIFTED = 1_000_000
"""ANONYMOUS_BUDGET of the stack (1200 calls a minute from all anonymous callers as shipped): 2 rounds of
n=400 sync + 400 async inside a minute would meet it. Still counted, in the same Lua call; never refusing."""

BIND_ORIGINAL = 'web.TCPSite(self._runner, "0.0.0.0", self.callback_port)'
BIND_LOOPBACK = 'web.TCPSite(self._runner, "127.0.0.1", self.callback_port)'
"""The one change made to the generator: its callback receiver listens on loopback only."""

DELIVERED_COUNT = (
    "from jobs.models import Job; "
    "print(Job.objects.filter(endpoint='compat.async', callback_status='delivered').count())"
)
"""Jobsite's own record of the compat callbacks its receiver answered with a 2xx, all rounds so far. The generator
counts a callback only if it has read the acknowledgement's request_id first: one that outruns its
acknowledgement is answered 200 and dropped, so it shows here and not in "callbacks received"."""

TIMING_PREFIX = "BENCH-TIMING "
GENERATOR_TIMER = f'''"""Run the original load_generator.py's main() unchanged; print the wall clock of its phases after it."""
import asyncio
import json
import time

import load_generator

marks = {{}}
generator = load_generator.IntegratedLoadGenerator
run_sync, run_async, handle = generator.run_sync_test, generator.run_async_test, generator._handle_callback


async def timed_sync(self, num_requests):
    started, cpu = time.perf_counter(), time.process_time()
    try:
        return await run_sync(self, num_requests)
    finally:
        marks["sync_wall_s"] = time.perf_counter() - started
        marks["sync_generator_cpu_s"] = time.process_time() - cpu


async def timed_async(self, num_requests):
    marks["async_started"] = time.perf_counter()
    return await run_async(self, num_requests)


async def timed_handle(self, request):
    pending = len(self.pending)
    response = await handle(self, request)
    if len(self.pending) < pending:  # a callback the generator counted
        marks["last_callback"] = time.perf_counter()
    return response


generator.run_sync_test, generator.run_async_test, generator._handle_callback = timed_sync, timed_async, timed_handle
asyncio.run(load_generator.main())
if "last_callback" in marks:
    marks["async_last_callback_s"] = marks["last_callback"] - marks["async_started"]
print("{TIMING_PREFIX}" + json.dumps({{k: v for k, v in marks.items() if k.endswith("_s")}}))
'''

SECTIONS = {"sync": "SYNC ENDPOINT RESULTS", "async": "ASYNC ENDPOINT RESULTS"}
"""Report titles the generator prints per phase."""
BLOCKS = {"latency": "Response Latency (ms):", "callback": "Time-to-Callback (ms):"}
STAT_LINE = re.compile(r"^\s+(p50|p95|p99|min|max|avg):\s+([-\d.]+)\s*$")


def _all_callbacks(run: dict[str, Any]) -> bool:
    return run["async"].get("callbacks_received") == run["async"]["success"]


def parse_report(text: str) -> dict[str, Any]:
    """The generator's printed report as numbers: per phase counts, latency and time-to-callback statistics,
    and the wall clock of each phase from the timing wrapper's line."""
    parsed: dict[str, Any] = {}
    for phase, title in SECTIONS.items():
        start = text.find(title)
        if start < 0:
            continue
        end = text.find("=" * 60 + "\n", text.find("=" * 60, start) + 60)
        section = text[start : end if end > 0 else len(text)]
        figures: dict[str, Any] = {}
        for name in ("Total", "Success", "Failed"):
            match = re.search(rf"^\s+{name}:\s+(\d+)", section, re.MULTILINE)
            figures[name.lower()] = int(match.group(1)) if match else None
        for block, heading in BLOCKS.items():
            lines = section.split(heading, 1)[1].splitlines()[1:] if heading in section else []
            for line in lines:
                stat = STAT_LINE.match(line)
                if not stat:
                    break
                figures[f"{block}_{stat.group(1)}_ms"] = float(stat.group(2))
        callbacks = re.search(r"Callbacks: (\d+)/(\d+)", section)
        if phase == "async":
            figures["callbacks_received"] = int(callbacks.group(1)) if callbacks else 0
        parsed[phase] = figures
    timing = next((line for line in text.splitlines() if line.startswith(TIMING_PREFIX)), None)
    marks = json.loads(timing.removeprefix(TIMING_PREFIX)) if timing else {}
    if "sync" in parsed:
        parsed["sync"]["wall_s"] = marks.get("sync_wall_s")
        parsed["sync"]["generator_cpu_s"] = marks.get("sync_generator_cpu_s")
    if "async" in parsed:
        complete = _all_callbacks(parsed)
        parsed["async"]["all_callbacks_wall_s"] = marks.get("async_last_callback_s") if complete else None
    return parsed


@dataclass(frozen=True)
class Figure:
    """One row of the table: how to read it from a round, and the issue's target for Jobsite against it."""

    label: str
    read: Callable[[dict[str, Any]], float | None]
    target: str = ""
    """'>= 3x', '<= 0.2x' (ratio Jobsite / original) or '<= 50 ms' (Jobsite's own value); '' for none."""
    ratio: bool = True
    """False for counts, where a ratio says nothing."""
    of_callbacks: bool = False
    """Read from the callbacks that arrived: a round that lost some understates it."""

    def met(self, original: float | None, jobsite: float | None) -> str:
        if not self.target or original is None or jobsite is None:
            return ""
        operator, bound = self.target.split(maxsplit=1)
        value = jobsite if bound.endswith("ms") else jobsite / original
        limit = float(bound.rstrip("xms "))
        return "met" if (value >= limit if operator == ">=" else value <= limit) else "not met"


def _throughput(run: dict[str, Any]) -> float | None:
    wall = run["sync"].get("wall_s")
    return run["sync"]["total"] / wall if wall else None


FIGURES = [
    Figure("sync: all requests, wall (s)", lambda run: run["sync"].get("wall_s")),
    Figure("sync throughput (req/s)", _throughput, ">= 3x"),
    Figure(
        "sync: the load generator's own CPU per request (ms)",
        lambda run: (
            1000 * run["sync"]["generator_cpu_s"] / run["sync"]["total"]
            if run["sync"].get("generator_cpu_s") is not None
            else None
        ),
    ),
    Figure("sync latency p50 (ms)", lambda run: run["sync"].get("latency_p50_ms"), "<= 1x"),
    Figure("sync latency p99 (ms)", lambda run: run["sync"].get("latency_p99_ms"), "<= 0.2x"),
    Figure("async acknowledgement p50 (ms)", lambda run: run["async"].get("latency_p50_ms"), "<= 1x"),
    Figure("async acknowledgement p99 (ms)", lambda run: run["async"].get("latency_p99_ms")),
    Figure("time-to-callback p50 (ms)", lambda run: run["async"].get("callback_p50_ms"), "<= 50 ms", of_callbacks=True),
    Figure("time-to-callback p99 (ms)", lambda run: run["async"].get("callback_p99_ms"), "<= 0.1x", of_callbacks=True),
    Figure("async: all callbacks in, wall (s)", lambda run: run["async"].get("all_callbacks_wall_s"), "<= 0.5x"),
    Figure("callbacks received", lambda run: run["async"].get("callbacks_received"), ratio=False),
    Figure(
        "callbacks answered 2xx by the receiver (Jobsite's record)",
        lambda run: run["async"].get("callbacks_delivered"),
        ratio=False,
    ),
    Figure("failed requests (sync + async)", lambda run: run["sync"]["failed"] + run["async"]["failed"], ratio=False),
]


def _number(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 or value == int(value) else f"{value:.3g}"


def _span(values: list[float]) -> str:
    if not values:
        return "-"
    low, high = min(values), max(values)
    return _number(low) if low == high else f"{_number(low)}-{_number(high)}"


def summarize(rounds: list[dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per figure: each target's values over rounds, their medians, the ratio Jobsite / original, the verdict.

    A round without a value (callbacks missing: no all-callbacks-in wall) is left out, and the verdict says so."""
    rows = []
    for figure in FIGURES:
        values = {
            target: [v for v in (figure.read(run[target]) for run in rounds) if v is not None]
            for target in ("original", "jobsite")
        }
        medians = {target: statistics.median(v) if v else None for target, v in values.items()}
        ratio = None
        if figure.ratio and medians["original"] and medians["jobsite"] is not None:
            ratio = medians["jobsite"] / medians["original"]
        verdict = figure.met(medians["original"], medians["jobsite"])
        if figure.target and not verdict:
            verdict = "no round to compare"
        elif verdict and not all(len(values[target]) == len(rounds) for target in values):
            verdict += f" (of the rounds with all callbacks: {len(values['original'])}, {len(values['jobsite'])})"
        elif verdict and figure.of_callbacks and not all(_all_callbacks(run[t]) for run in rounds for t in run):
            verdict += " (callbacks lost: percentiles of those received)"
        rows.append({"figure": figure.label, **values, "ratio": ratio, "target": figure.target, "verdict": verdict})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| figure | original | Jobsite | ratio Jobsite/original | issue target | |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = f"{row['ratio']:.2f}x" if row["ratio"] is not None else "-"
        lines.append(
            f"| {row['figure']} | {_span(row['original'])} | {_span(row['jobsite'])} | {ratio} "
            f"| {row['target'] or '-'} | {row['verdict'] if row['target'] else ''} |"
        )
    return "\n".join(lines)


def extract_original(source: Path, into: Path) -> None:
    """The original's committed HEAD, from a work tree or a bare git dir alike, outside the repo."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(source), "archive", "HEAD"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)


def original_python(requirements: Path) -> Path:
    """The original venv's python, (re)installed when its requirements.txt changed."""
    python = ORIGINAL_VENV / "bin" / "python"
    stamp = ORIGINAL_VENV / ".requirements.sha256"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        return python
    shutil.rmtree(ORIGINAL_VENV, ignore_errors=True)
    print(f"installing the original's requirements into {ORIGINAL_VENV} ...", flush=True)
    venv.create(ORIGINAL_VENV, with_pip=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "-r", requirements], check=True)
    stamp.write_text(digest)
    return python


def prepare_generator(original: Path, into: Path) -> Path:
    """The generator copied with its receiver bound to loopback, and the timing wrapper beside it."""
    into.mkdir()
    source = (original / "load_generator.py").read_text()
    if source.count(BIND_ORIGINAL) != 1:
        sys.exit(f"load_generator.py: expected its bind line once: {BIND_ORIGINAL}")
    (into / "load_generator.py").write_text(source.replace(BIND_ORIGINAL, BIND_LOOPBACK))
    timer = into / "timed_generator.py"
    timer.write_text(GENERATOR_TIMER)
    return timer


def _wait_ready(url: str, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{what} exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    sys.exit(f"{what} did not answer /healthz at {url}")


@contextlib.contextmanager
def serving(argv: list[str], *, port: int, cwd: Path, env: dict[str, str], what: str) -> Iterator[tuple[str, int]]:
    """A server started quietly, once it answers /healthz on 127.0.0.1:port: its URL and its process id; stopped
    after (killed if it outlives SIGTERM by 30 s)."""
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, what)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@contextlib.contextmanager
def running_original(original: Path, python: Path) -> Iterator[tuple[str, int]]:
    """The original backend served by uvicorn on a free port: its URL and its process id."""
    port = free_port()
    argv = [str(python), "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)]
    env = dict(os.environ, APP_CALLBACK_BLOCK_PRIVATE_IPS="false")
    with serving(argv, port=port, cwd=original, env=env, what="the original backend") as served:
        yield served


def check_and_warm(url: str, requests: int) -> None:
    """Both targets answer an anonymous /sync with 200 before anything is measured; first requests warm them."""
    with httpx.Client(base_url=url, timeout=30) as client:
        for index in range(requests):
            response = client.post("/sync", json={"data": f"warm-up-{index}", "iterations": 1000})
            if response.status_code != 200:
                sys.exit(f"{url}/sync answered {response.status_code}: {response.text[:300]}")


def run_generator(python: Path, timer: Path, url: str, requests: int, concurrency: int) -> tuple[str, dict]:
    command = [
        str(python),
        str(timer),
        "--url",
        url,
        "-n",
        str(requests),
        "-c",
        str(concurrency),
        "--mode",
        "both",
        "--callback-port",
        str(free_port()),
    ]
    done = subprocess.run(command, cwd=timer.parent, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        sys.exit(f"load generator failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout, parse_report(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--original", type=Path, default=DEFAULT_ORIGINAL, help="work tree or bare git dir")
    parser.add_argument("-n", type=int, default=400, help="requests per phase")
    parser.add_argument("-c", type=int, default=20, help="concurrency")
    parser.add_argument("--rounds", type=int, default=2, help="A B rounds (original, then Jobsite)")
    parser.add_argument("--database-url", help="Jobsite's database (default: a fresh SQLite file)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/7", help="Jobsite's Redis db (FLUSHed)")
    parser.add_argument("--warm-up", type=int, default=20, help="sequential /sync requests per target first")
    parser.add_argument("--json", type=Path, help="write the raw figures and the generator's output here")
    args = parser.parse_args()
    rounds: list[dict[str, Any]] = []
    outputs: list[dict[str, str]] = []
    load_average = {"start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="jobsite-versus-original-") as scratch:
        original = Path(scratch) / "original"
        extract_original(args.original, original)
        python = original_python(original / "requirements.txt")
        timer = prepare_generator(original, Path(scratch) / "generator")
        # The free-webhook budget is a rate limit on anonymous callers' deliveries (120 a minute): lifted like
        # the routes' own limit, as the original had none (else it, not the service, paces the callbacks);
        # so is the budget of all anonymous calls (else a second round inside its minute meets 429s).
        stack_env = {
            "CALLBACK_ALLOW_PRIVATE": "true",
            "CALLBACK_FREE_BUDGET": str(FREE_BUDGET_LIFTED),
            "ANONYMOUS_BUDGET": str(ANONYMOUS_BUDGET_LIFTED),
        }
        with (
            running_original(original, python) as (original_url, _),
            running_stack(
                topology=RUN_COMMAND, redis_url=args.redis_url, database_url=args.database_url, env=stack_env
            ) as stack,
        ):
            for name in ("compat.sync", "compat.async"):
                stack.manage("policy", "set", name, *COMPAT_POLICY)
            urls = {"original": original_url, "jobsite": stack.url}
            delivered_before = 0
            for url in urls.values():
                check_and_warm(url, args.warm_up)
            for index in range(args.rounds):
                rounds.append({})
                outputs.append({})
                for target, url in urls.items():
                    print(f"round {index + 1}/{args.rounds}: {target} ...", flush=True)
                    outputs[-1][target], rounds[-1][target] = run_generator(python, timer, url, args.n, args.c)
                delivered = int(stack.manage("shell", "-c", DELIVERED_COUNT).split()[-1])
                rounds[-1]["jobsite"]["async"]["callbacks_delivered"] = delivered - delivered_before
                delivered_before = delivered
    load_average["end"] = os.getloadavg()
    rows = summarize(rounds)
    database = "PostgreSQL" if args.database_url else "SQLite"
    print(f"\nn={args.n} c={args.c}, {args.rounds} rounds A B, Jobsite on {database}; load average {load_average}\n")
    print(format_table(rows))
    if args.json:
        config = {"n": args.n, "c": args.c, "rounds": args.rounds, "database": database, "load_average": load_average}
        document = {"config": config, "rounds": rounds, "summary": rows, "generator_output": outputs}
        args.json.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Jobsite's compatible `/sync` against the original backend and against a bare DRF view, one sync load (issue 11).

The bare view (bench/bare_urls.py: validate, hash, INSERT one row) runs under the same gunicorn, settings,
database and Redis as the service; it is the ceiling a Django service reaches on this machine, and the distance
from it to Jobsite is the pipeline's overhead. Method as bench/versus_original.py's sync phase: the original's own
load generator (`--mode sync`, its bind patched to loopback), rounds of original, bare, Jobsite (A B C A B C), the
figures parsed from its report; plus the CPU of each server's processes per request (/proc, user + system).

    .venv/bin/python -m bench.bare_reference [-n 2000] [-c 20] [--rounds 2]
        [--database-url postgres://postgres@127.0.0.1:5432/h_bench] [--json FILE]
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import versus_original as vo
from bench.stack import ROOT, RUN_COMMAND, Stack, free_port, gunicorn_command, process_cpu_s, running_stack

TARGETS = ("original", "bare", "jobsite")


@contextlib.contextmanager
def running_bare(stack: Stack) -> Iterator[tuple[str, int]]:
    """gunicorn with the bare settings, sized as the run command's, on the stack's database and Redis."""
    port = free_port()
    argv = gunicorn_command(port, workers=RUN_COMMAND.web_workers, threads=RUN_COMMAND.threads)
    env = dict(stack.env, DJANGO_SETTINGS_MODULE="bench.bare_settings")
    with vo.serving(argv, port=port, cwd=ROOT, env=env, what="the bare reference") as served:
        yield served


def run_sync(python: Path, timer: Path, url: str, requests: int, concurrency: int, server: int) -> dict[str, Any]:
    command = [str(python), str(timer), "--url", url, "-n", str(requests), "-c", str(concurrency), "--mode", "sync"]
    before = process_cpu_s(server)
    done = subprocess.run(command, cwd=timer.parent, capture_output=True, text=True, timeout=900)
    cpu = process_cpu_s(server) - before
    if done.returncode != 0:
        sys.exit(f"load generator failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    sync = vo.parse_report(done.stdout)["sync"]
    return {**sync, "throughput": sync["total"] / sync["wall_s"], "server_cpu_ms": 1000 * cpu / sync["total"]}


FIGURES = {
    "throughput (req/s)": "throughput",
    "latency p50 (ms)": "latency_p50_ms",
    "latency p99 (ms)": "latency_p99_ms",
    "server CPU per request (ms)": "server_cpu_ms",
    "failed requests": "failed",
}


def _ratio(medians: dict[str, float], numerator: str, denominator: str) -> str:
    return f"{medians[numerator] / medians[denominator]:.2f}x" if medians[denominator] else "-"


def format_table(rounds: list[dict[str, dict[str, Any]]]) -> str:
    lines = ["| figure | original | bare DRF view | Jobsite | bare / original | Jobsite / original | Jobsite / bare |"]
    lines.append("|---|---|---|---|---|---|---|")
    for label, key in FIGURES.items():
        values = {target: [run[target][key] for run in rounds] for target in TARGETS}
        medians = {target: statistics.median(values[target]) for target in TARGETS}
        ratios = [("bare", "original"), ("jobsite", "original"), ("jobsite", "bare")]
        spans = " | ".join(vo._span(values[target]) for target in TARGETS)
        shown = " | ".join("-" if key == "failed" else _ratio(medians, *pair) for pair in ratios)
        lines.append(f"| {label} | {spans} | {shown} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--original", type=Path, default=vo.DEFAULT_ORIGINAL, help="work tree or bare git dir")
    parser.add_argument("-n", type=int, default=2000, help="sync requests per target and round")
    parser.add_argument("-c", type=int, default=20, help="concurrency")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--database-url", help="the service's database (default: a fresh SQLite file)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/7", help="the service's Redis db (FLUSHed)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rounds: list[dict[str, dict[str, Any]]] = []
    load_average = {"start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="jobsite-bare-reference-") as scratch:
        original = Path(scratch) / "original"
        vo.extract_original(args.original, original)
        python = vo.original_python(original / "requirements.txt")
        timer = vo.prepare_generator(original, Path(scratch) / "generator")
        stack_env = {"ANONYMOUS_BUDGET": str(vo.ANONYMOUS_BUDGET_LIFTED)}
        with (
            vo.running_original(original, python) as (original_url, original_pid),
            running_stack(
                topology=RUN_COMMAND, redis_url=args.redis_url, database_url=args.database_url, env=stack_env
            ) as stack,
            running_bare(stack) as (bare_url, bare_pid),
        ):
            stack.manage("policy", "set", "compat.sync", *vo.COMPAT_POLICY)
            servers = {
                "original": (original_url, original_pid),
                "bare": (bare_url, bare_pid),
                "jobsite": (stack.url, stack.web_pid),
            }
            for url, _ in servers.values():
                vo.check_and_warm(url, 50)
            for index in range(args.rounds):
                rounds.append({})
                for target, (url, pid) in servers.items():
                    print(f"round {index + 1}/{args.rounds}: {target} ...", flush=True)
                    rounds[-1][target] = run_sync(python, timer, url, args.n, args.c, pid)
    load_average["end"] = os.getloadavg()
    database = "PostgreSQL" if args.database_url else "SQLite"
    print(f"\nsync, n={args.n} c={args.c}, {args.rounds} rounds, {database}; load average {load_average}\n")
    print(format_table(rounds))
    if args.json:
        config = {"n": args.n, "c": args.c, "rounds": args.rounds, "database": database, "load_average": load_average}
        args.json.write_text(json.dumps({"config": config, "rounds": rounds}, indent=2) + "\n")


if __name__ == "__main__":
    main()

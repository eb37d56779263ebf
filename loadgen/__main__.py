"""Command line: `python -m loadgen -n N -c C --mode sync|async|both --url URL --api-key KEY ...`."""

import argparse
import json
import sys
from pathlib import Path

from loadgen.auth import auth_headers
from loadgen.dialect import ASYNC, SYNC, JobSpec
from loadgen.progress import Progress
from loadgen.report import table, write_json
from loadgen.runner import RunConfig, run

MODES = {SYNC: (SYNC,), ASYNC: (ASYNC,), "both": (SYNC, ASYNC)}
"""`both` runs the sync phase, then the async phase."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _json_object(text: str) -> dict:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadgen", description=__doc__)
    p.add_argument("-n", "--requests", type=_positive_int, required=True, help="requests per mode")
    p.add_argument("-c", "--concurrency", type=_positive_int, required=True, help="concurrent requests")
    p.add_argument("--mode", choices=sorted(MODES), default=SYNC)
    p.add_argument("--url", required=True, help="base URL of the service, e.g. http://127.0.0.1:8000")
    credentials = p.add_mutually_exclusive_group()
    credentials.add_argument("--api-key", help="sent as Authorization: Bearer <key>")
    credentials.add_argument("--basic", metavar="USER:PASSWORD", help="HTTP Basic credentials instead of a key")
    p.add_argument("--kind", default="hash")
    p.add_argument("--data", default="hello", help="hash input data")
    p.add_argument("--iterations", type=_positive_int, default=1000, help="hash iterations")
    p.add_argument("--input", type=_json_object, help="job input as JSON (other kinds; overrides --data)")
    p.add_argument("--unique", action="store_true", help="append the request number to --data (no cache hits)")
    p.add_argument("--compat", action="store_true", help="speak the original backend's /sync and /async routes")
    p.add_argument("--json", type=Path, metavar="FILE", help="write all figures and samples as JSON")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="draw latency and time-to-callback")
    p.add_argument("--callback-host", default="127.0.0.1", help="address of the webhook receiver")
    p.add_argument("--callback-port", type=int, default=0, help="port of the webhook receiver (0: any free)")
    p.add_argument("--webhook-secret", help="whsec_... : verify callback signatures (Standard Webhooks)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    p.add_argument("--callback-wait", type=float, default=30.0, help="seconds to wait for callbacks after submitting")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run, print the table; exit status 1 when not a single request succeeded."""
    args = parser().parse_args(argv)
    if args.compat and (args.kind != "hash" or args.input is not None):
        parser().error("--compat speaks only the hash kind (--data, --iterations)")
    config = RunConfig(
        url=args.url.rstrip("/"),
        requests=args.requests,
        concurrency=args.concurrency,
        modes=MODES[args.mode],
        spec=JobSpec(kind=args.kind, data=args.data, iterations=args.iterations, input=args.input, unique=args.unique),
        headers=auth_headers(api_key=args.api_key, basic=args.basic),
        compat=args.compat,
        timeout=args.timeout,
        callback_host=args.callback_host,
        callback_port=args.callback_port,
        callback_wait=args.callback_wait,
        webhook_secret=args.webhook_secret,
    )
    results = run(config, Progress(enabled=not args.no_progress))
    print(table(results))
    if args.json:
        described = {
            key: value for key, value in vars(args).items() if key not in ("api_key", "basic", "webhook_secret")
        }
        write_json(args.json, results, {**described, "json": str(args.json), "plot": str(args.plot or "")})
    if args.plot:
        from loadgen.plot import plot  # matplotlib is slow to import: only when asked for

        plot(args.plot, results, url=config.url)
    return 0 if any(sample.ok for result in results for sample in result.samples) else 1


if __name__ == "__main__":
    sys.exit(main())

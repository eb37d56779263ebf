"""The printed table and the JSON file: one column per phase, every figure of `PhaseResult.summary`."""

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loadgen.stats import PhaseResult

LATENCY_ROWS = ("min", "avg", "p50", "p95", "p99", "max")
CALLBACK_ROWS = ("p50", "p95", "p99", "max")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _rows(summaries: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """(label, one cell per phase) for every row any phase has."""
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, cell: Any) -> None:
        rows.append((label, [cell(s) for s in summaries]))

    row("requests", lambda s: str(s["requests"]))
    row("concurrency", lambda s: str(s["concurrency"]))
    row("duration (s)", lambda s: f"{s['duration_s']:.2f}")
    row("throughput (req/s)", lambda s: "-" if s["throughput_rps"] is None else f"{s['throughput_rps']:.1f}")
    row("ok", lambda s: str(s["ok"]))
    row("failed", lambda s: str(s["failed"]))
    for code in sorted({code for s in summaries for code in s["status_codes"]}):
        row(f"  status {code}", lambda s, code=code: str(s["status_codes"].get(code, 0)))
    for error in sorted({error for s in summaries for error in s["transport_errors"]}):
        row(f"  error {error}", lambda s, error=error: str(s["transport_errors"].get(error, 0)))
    for name in LATENCY_ROWS:
        row(f"latency {name} (ms)", lambda s, name=name: _ms(s["latency_ms"][name]))
    if any("callbacks" in s for s in summaries):
        row("callbacks expected", lambda s: str(s["callbacks"]["expected"]) if "callbacks" in s else "-")
        row("callbacks received", lambda s: str(s["callbacks"]["received"]) if "callbacks" in s else "-")
        row("completion rate", lambda s: _rate(s.get("callbacks")))
        for name in CALLBACK_ROWS:
            row(f"to callback {name} (ms)", lambda s, name=name: _callback_ms(s, name))
        for name in ("verified", "invalid", "unverified", "duplicates", "malformed", "unmatched"):
            row(f"callbacks {name}", lambda s, name=name: str(s["callbacks"][name]) if "callbacks" in s else "-")
    row("client loop lag p99 (ms)", lambda s: _ms(s["client_loop_lag_ms"]["p99"]))
    row("client loop lag max (ms)", lambda s: _ms(s["client_loop_lag_ms"]["max"]))
    return rows


def _rate(callbacks: dict[str, Any] | None) -> str:
    if callbacks is None or callbacks["completion_rate"] is None:
        return "-"
    return f"{callbacks['completion_rate']:.1%} in {callbacks['wait_s']:g} s"


def _callback_ms(summary: dict[str, Any], name: str) -> str:
    return _ms(summary["callbacks"]["time_to_callback_ms"][name]) if "callbacks" in summary else "-"


def table(results: list[PhaseResult]) -> str:
    """A plain-text table, one column per phase."""
    summaries = [result.summary() for result in results]
    headers = [f"{s['mode']}{' (compat)' if s['compat'] else ''}" for s in summaries]
    rows = _rows(summaries)
    label_width = max(len(label) for label, _ in rows)
    widths = [max(len(header), *(len(cells[i]) for _, cells in rows)) for i, header in enumerate(headers)]
    lines = ["".ljust(label_width) + "".join(f"  {h:>{w}}" for h, w in zip(headers, widths, strict=True))]
    lines += [
        label.ljust(label_width) + "".join(f"  {c:>{w}}" for c, w in zip(cells, widths, strict=True))
        for label, cells in rows
    ]
    return "\n".join(lines)


def write_json(path: Path, results: list[PhaseResult], config: dict[str, Any]) -> None:
    """All figures, the (credential-free) configuration and every request's sample."""
    document = {
        "config": config,
        "percentile_definition": "nearest-rank",
        "phases": [{**result.summary(), "samples": [asdict(s) for s in result.samples]} for result in results],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")

"""Pictures of a run (matplotlib, Agg backend, imported only when a plot is asked for): one latency
histogram per phase with its p50/p95/p99, and time-to-callback against submit time for async phases."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from loadgen.stats import Distribution, PhaseResult

HISTOGRAM_BINS = 50
MARKERS = (("p50", "tab:green"), ("p95", "tab:orange"), ("p99", "tab:red"))


def _name(result: PhaseResult) -> str:
    return f"{result.mode}{' (compat)' if result.compat else ''}"


def plot(path: Path, results: list[PhaseResult], *, url: str) -> None:
    """Write a PNG with a latency histogram per phase, then a time-to-callback scatter per async phase."""
    async_results = [r for r in results if r.callbacks is not None]
    panels = len(results) + len(async_results)
    figure, grid = plt.subplots(panels, 1, figsize=(10, 3.8 * panels), squeeze=False)
    axes = [ax for (ax,) in grid]
    for ax, result in zip(axes, results, strict=False):
        latencies = [s.latency_ms for s in result.samples if s.status_code is not None]
        ax.set_title(
            f"{_name(result)}: request latency, n={len(result.samples)}, c={result.concurrency} "
            f"({result.summary()['ok']} ok)"
        )
        ax.set_xlabel("latency (ms), submit to full response")
        ax.set_ylabel("requests")
        if not latencies:
            ax.text(0.5, 0.5, "no responses", ha="center", va="center", transform=ax.transAxes)
            continue
        ax.hist(latencies, bins=HISTOGRAM_BINS, color="tab:blue", alpha=0.8)
        figures = Distribution.of(latencies)
        for name, colour in MARKERS:
            value = getattr(figures, name)
            ax.axvline(value, color=colour, linestyle="--", label=f"{name} {value:.1f} ms")
        ax.legend()
    for ax, result in zip(axes[len(results) :], async_results, strict=True):
        points = [(s.sent_at, s.callback_ms) for s in result.samples if s.callback_ms is not None]
        ax.set_title(
            f"{_name(result)}: time to callback over the run "
            f"({len(points)}/{result.callbacks_expected} callbacks within {result.callback_wait_s:g} s)"
        )
        ax.set_xlabel("submit time (s since the phase began)")
        ax.set_ylabel("time to callback (ms)")
        if points:
            ax.scatter(*zip(*points, strict=True), s=8, color="tab:purple", alpha=0.7)
        else:
            ax.text(0.5, 0.5, "no callbacks received", ha="center", va="center", transform=ax.transAxes)
    figure.suptitle(f"loadgen against {url} (percentiles: nearest rank)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)

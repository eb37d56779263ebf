"""Samples a run collects and the figures computed from them.

Percentiles use the nearest-rank definition: the p-th percentile of n sorted values is the value at
1-based rank ceil(p/100 * n) (rank 1 for p = 0). Every reported figure is therefore a latency that was
actually observed, never an interpolation between two requests.
"""

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

PERCENTILES = (50, 95, 99)
"""Percentiles reported for request latency and time-to-callback."""


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values; p in [0, 100]."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is outside [0, 100]")
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class Distribution:
    """Summary of a set of durations in milliseconds: min, avg, nearest-rank percentiles, max."""

    count: int
    min: float | None
    avg: float | None
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None

    @classmethod
    def of(cls, values: Iterable[float]) -> "Distribution":
        ordered = sorted(values)
        if not ordered:
            return cls(0, None, None, None, None, None, None)
        p50, p95, p99 = (percentile(ordered, p) for p in PERCENTILES)
        return cls(len(ordered), ordered[0], sum(ordered) / len(ordered), p50, p95, p99, ordered[-1])


@dataclass(frozen=True)
class Sample:
    """One request: when it was sent (s since the phase began), how long it took, what came back."""

    index: int
    sent_at: float
    latency_ms: float
    status_code: int | None
    error: str | None
    ok: bool
    job_id: str | None
    callback_ms: float | None = None


@dataclass(frozen=True)
class CallbackCounts:
    """What the webhook receiver saw during one phase."""

    verified: int = 0
    invalid: int = 0
    unverified: int = 0
    duplicates: int = 0
    malformed: int = 0
    unmatched: int = 0
    statuses: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PhaseResult:
    """Everything measured in one phase (one mode) of a run."""

    mode: str
    compat: bool
    concurrency: int
    duration_s: float
    samples: list[Sample]
    callbacks_expected: int
    callback_wait_s: float
    callbacks: CallbackCounts | None
    loop_lag_ms: list[float]

    def summary(self) -> dict[str, Any]:
        """All figures of the phase as plain JSON-able data (without the per-request samples)."""
        answered = [s for s in self.samples if s.status_code is not None]
        ok = sum(s.ok for s in self.samples)
        status_codes = Counter(str(s.status_code) for s in answered)
        errors = Counter(s.error for s in self.samples if s.error is not None)
        figures: dict[str, Any] = {
            "mode": self.mode,
            "compat": self.compat,
            "requests": len(self.samples),
            "concurrency": self.concurrency,
            "duration_s": self.duration_s,
            "throughput_rps": len(self.samples) / self.duration_s if self.duration_s else None,
            "ok": ok,
            "failed": len(self.samples) - ok,
            "status_codes": dict(sorted(status_codes.items())),
            "transport_errors": dict(sorted(errors.items())),
            # Latency of every request that got an HTTP answer, whatever its status; transport errors excluded.
            "latency_ms": asdict(Distribution.of(s.latency_ms for s in answered)),
            "client_loop_lag_ms": asdict(Distribution.of(self.loop_lag_ms)),
        }
        if self.callbacks is not None:
            received = [s.callback_ms for s in self.samples if s.callback_ms is not None]
            figures["callbacks"] = {
                "expected": self.callbacks_expected,
                "received": len(received),
                "completion_rate": len(received) / self.callbacks_expected if self.callbacks_expected else None,
                "wait_s": self.callback_wait_s,
                "time_to_callback_ms": asdict(Distribution.of(received)),
                **asdict(self.callbacks),
            }
        return figures

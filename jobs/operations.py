"""The admin's operations page: the last hour or day of jobs, queues, webhooks, credits and circuits, as charts.

Drawn from what the service already keeps: job rows (outcomes, queue waits), webhook attempt rows, the credits
ledger, and the live queue depths and circuit states in Redis. Charts are inline SVG made here: the admin must
work offline, and a bar chart needs no library.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib.admin import site
from django.db.models import Avg, Count, Max, Q, Sum
from django.db.models.functions import TruncHour, TruncMinute
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from redis.exceptions import RedisError

from credits.models import EntryType, LedgerEntry
from jobs import queues
from jobs.circuit import circuit_states
from jobs.kind_settings import get_kind_settings
from jobs.kinds import KINDS
from jobs.models import CallbackAttempt, Job, JobStatus

WINDOWS = {"hour": (timedelta(hours=1), timedelta(minutes=1)), "day": (timedelta(days=1), timedelta(hours=1))}
"""Each window of the page and its bucket: the last hour by minute, the last day by hour."""
OUTCOMES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)
TOP_CONSUMERS = 10


@dataclass(frozen=True)
class Series:
    """One chart: a value per bucket for each named line, drawn as grouped bars."""

    title: str
    buckets: list[datetime]
    lines: dict[str, list[float]]

    def svg(self, *, width: int = 560, height: int = 120) -> str:
        top = max((value for values in self.lines.values() for value in values), default=0) or 1
        slot = width / max(len(self.buckets), 1)
        bar = max(slot / max(len(self.lines), 1) - 1, 1)
        colors = ("#417690", "#ba2121", "#999999", "#79aec8")
        rects = [
            f'<rect x="{i * slot + n * bar:.1f}" y="{height - value / top * height:.1f}" width="{bar:.1f}" '
            f'height="{value / top * height:.1f}" fill="{colors[n % len(colors)]}"><title>{name} '
            f"{self.buckets[i]:%H:%M}: {value:g}</title></rect>"
            for n, (name, values) in enumerate(self.lines.items())
            for i, value in enumerate(values)
            if value
        ]
        return (
            f'<svg role="img" aria-label="{self.title}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" style="background:#f8f8f8">{"".join(rects)}</svg>'
        )

    @property
    def legend(self) -> list[tuple[str, float]]:
        return [(name, sum(values)) for name, values in self.lines.items()]


def _buckets(start: datetime, end: datetime, step: timedelta) -> list[datetime]:
    first = (
        start.replace(second=0, microsecond=0)
        if step < timedelta(hours=1)
        else start.replace(minute=0, second=0, microsecond=0)
    )
    return [first + step * n for n in range(int((end - first) / step) + 1)]


def operations_overview(*, window: str = "hour", now: datetime | None = None) -> dict[str, Any]:
    """Charts and tables of the last hour (by minute) or day (by hour); live queue and circuit state from Redis."""
    span, step = WINDOWS[window]
    now = now or timezone.now()
    start = now - span
    buckets = _buckets(start, now, step)
    trunc = TruncMinute if step < timedelta(hours=1) else TruncHour
    index = {bucket: i for i, bucket in enumerate(buckets)}

    def per_bucket(rows: Any, field: str) -> list[float]:
        values = [0.0] * len(buckets)
        for row in rows:
            if row["bucket"] in index:
                values[index[row["bucket"]]] = float(row[field] or 0)
        return values

    finished = Job.objects.filter(finished_at__gte=start).annotate(bucket=trunc("finished_at")).order_by()
    outcomes = {
        outcome.label.lower(): per_bucket(finished.filter(status=outcome).values("bucket").annotate(n=Count("id")), "n")
        for outcome in OUTCOMES
    }
    claimed = Job.objects.filter(started_at__gte=start, queue_wait_ms__isnull=False)
    waits = claimed.annotate(bucket=trunc("started_at")).order_by().values("bucket")
    waits = waits.annotate(mean=Avg("queue_wait_ms"), worst=Max("queue_wait_ms"))
    wait_rows = list(waits)
    attempts = CallbackAttempt.objects.filter(at__gte=start).annotate(bucket=trunc("at")).order_by().values("bucket")
    delivered = Q(status_code__gte=200, status_code__lt=300)
    attempts = attempts.annotate(ok=Count("id", filter=delivered), failed=Count("id", filter=~delivered))
    attempt_rows = list(attempts)
    consumers = (
        LedgerEntry.objects.filter(created_at__gte=start, type=EntryType.CHARGE)
        .values("account__user__username")
        .annotate(spent=-Sum("amount"), jobs=Count("id"))
        .order_by("-spent")[:TOP_CONSUMERS]
    )
    return {
        "window": window,
        "start": start,
        "now": now,
        "charts": [
            Series(f"Jobs finished per {'minute' if trunc is TruncMinute else 'hour'} by outcome", buckets, outcomes),
            Series(
                "Queue wait (ms): mean and worst of the jobs claimed",
                buckets,
                {"mean": per_bucket(wait_rows, "mean"), "worst": per_bucket(wait_rows, "worst")},
            ),
            Series(
                "Webhook attempts: delivered and failed",
                buckets,
                {"delivered": per_bucket(attempt_rows, "ok"), "failed": per_bucket(attempt_rows, "failed")},
            ),
        ],
        "consumers": list(consumers),
        **_live_state(),
    }


def _live_state() -> dict[str, Any]:
    """Queue depths and circuit states now (Redis keeps no history of them; Prometheus does)."""
    try:
        depths = {name: queues.queue_depth(name) for name in queues.all_queues()}
        circuits = {
            name: {state.value: count for state, count in circuit_states(get_kind_settings(name)).items()}
            for name, kind in KINDS.items()
            if kind.circuit_target is not None
        }
    except RedisError:
        return {"redis_error": True, "queue_depths": {}, "circuits": {}}
    return {"redis_error": False, "queue_depths": depths, "circuits": circuits}


def operations_view(request: HttpRequest) -> HttpResponse:
    window = request.GET.get("window", "hour")
    window = window if window in WINDOWS else "hour"
    context = {**site.each_context(request), "title": "Operations", **operations_overview(window=window)}
    return TemplateResponse(request, "admin/jobs/operations.html", context)

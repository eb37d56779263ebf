"""Prometheus metrics of access control (served with every other metric at /metrics, jobs.metrics)."""

from prometheus_client import Counter

RATE_LIMIT_REJECTIONS = Counter(
    "jobsite_rate_limit_rejections_total",
    "Requests refused by a limit, by endpoint and algorithm.",
    ["endpoint", "algorithm"],
)

"""/metrics: every process's counters (jobs/metrics.py) plus live state read from Redis at scrape time."""

import os
from collections.abc import Iterator

import prometheus_client
from django.http import HttpResponse
from drf_spectacular.utils import extend_schema
from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from rest_framework.request import Request
from rq import Worker

from accounts.api import EndpointView
from accounts.endpoints import Endpoint
from jobs import queues
from jobs.circuit import CircuitState, circuit_states
from jobs.kind_settings import get_kind_settings
from jobs.kinds import KINDS
from jobs.metrics import LEDGER_CHECK_KEY, RECONCILER_LAST_RUN_KEY
from jobs.pools import pool_staged
from jobsite.redis import get_redis

CIRCUIT_STATES = (CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN)
"""The states /metrics reports a count of targets for, per kind with a breaker."""


def _worker_counts() -> dict[str, int]:
    counts = dict.fromkeys(queues.all_queues(), 0)
    for worker in Worker.all(connection=get_redis()):
        for name in worker.queue_names():
            counts[name] = counts.get(name, 0) + 1
    return counts


def _redis_number(key: str) -> float | None:
    raw = get_redis().get(key)
    return None if raw is None else float(raw)


class RedisStateCollector(Collector):
    """Live state read at scrape time: queue depths and the circuit state of every kind with a breaker."""

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "jobsite_queue_depth", "Jobs waiting in each RQ queue (a pool's staged ones too).", labels=["queue"]
        )
        staged = GaugeMetricFamily(
            "jobsite_queue_staged",
            "Jobs staged in each worker pool by priority, waiting for the dispatcher (jobs/pools.py).",
            labels=["queue", "priority"],
        )
        circuit = GaugeMetricFamily(
            "jobsite_circuit_state",
            "Targets (hosts) whose circuit breaker is in each state, per kind; closed: failures below the threshold.",
            labels=["kind", "state"],
        )
        workers = GaugeMetricFamily("jobsite_workers", "Live RQ workers listening on each queue.", labels=["queue"])
        reconciler = GaugeMetricFamily(
            "jobsite_reconciler_last_run_timestamp_seconds", "When the reconciler (manage.py cron) last completed."
        )
        ledger = GaugeMetricFamily(
            "jobsite_credit_accounts_out_of_balance",
            "Credit accounts whose balance is not their ledger's sum (last check).",
        )
        try:
            for name in queues.all_queues():
                depth.add_metric([name], queues.queue_depth(name))
            for name in queues.job_queues():
                for priority, count in pool_staged(get_redis(), name).items():
                    staged.add_metric([name, priority], count)
            for name, count in _worker_counts().items():
                workers.add_metric([name], count)
            last_run, mismatched = _redis_number(RECONCILER_LAST_RUN_KEY), _redis_number(LEDGER_CHECK_KEY)
            for kind_name, kind in KINDS.items():
                if kind.circuit_target is not None:
                    states = circuit_states(get_kind_settings(kind_name))
                    for state in CIRCUIT_STATES:
                        circuit.add_metric([kind_name, state.value], float(states[state]))
        except RedisError:
            return
        yield depth
        yield staged
        yield circuit
        yield workers
        if last_run is not None:  # absent until the first run: alerts use absent() for a cron that never ran
            reconciler.add_metric([], last_run)
            yield reconciler
        if mismatched is not None:
            ledger.add_metric([], mismatched)
            yield ledger


def metrics_exposition() -> HttpResponse:
    """Every process's counters (multiprocess mode) plus live Redis state, in Prometheus' text format."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(prometheus_client.REGISTRY)  # type: ignore[arg-type]
    registry.register(RedisStateCollector())
    return HttpResponse(prometheus_client.generate_latest(registry), content_type=prometheus_client.CONTENT_TYPE_LATEST)


class MetricsView(EndpointView):
    """/metrics under the `metrics.read` policy: public by default (scrapers), staff may demand a key or an IP."""

    endpoint = Endpoint.METRICS_READ
    anonymous_budget = False  # monitoring must keep working while anonymous job traffic is throttled

    @extend_schema(exclude=True)
    def get(self, request: Request) -> HttpResponse:
        return metrics_exposition()

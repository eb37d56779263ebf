"""Traces, metrics and logs: what operators see."""

import contextlib
import io
import json
import logging
import logging.config
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest
from django.test import override_settings
from opentelemetry import trace
from opentelemetry.instrumentation.django import DjangoInstrumentor
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from accounts.models import EndpointPolicy, User
from jobs import queues, ssrf
from jobs.models import Job, JobStatus, KindSettings
from jobs.pools import PoolQueue
from jobs.worker import ResilientWorker
from jobsite.logs import REDACTED, get_logger, logging_config, redact
from jobsite.tracing import instrument_django
from tests.access_helpers import clear_of_window_edge
from tests.conftest import LocalHTTPServer, auth_headers, respond, run_worker_burst
from tests.waiting import wait_until
from tests.webhook_helpers import drain_callbacks


def scripted_statuses(*codes: int) -> Callable[[BaseHTTPRequestHandler], None]:
    """A receiver answering the given statuses in turn, then the last one again."""
    answers = iter(codes)

    def handler(request: BaseHTTPRequestHandler) -> None:
        respond(request, next(answers, codes[-1]))

    return handler


HASH = {"kind": "hash", "input": {"data": "trace me", "iterations": 10}}


@pytest.fixture
def job_spans():
    """Spans exported to memory, with tracing as shipped (OTEL_EXPORTER=none: requests are not instrumented)."""
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    trace.get_tracer_provider().add_span_processor(processor)
    yield exporter
    processor.shutdown()


@pytest.fixture
def spans(job_spans: InMemorySpanExporter):
    """The same, requests traced too, as with an exporter configured."""
    instrument_django()
    yield job_spans
    DjangoInstrumentor().uninstrument()


@pytest.mark.django_db(transaction=True)
@override_settings(CALLBACK_ALLOW_PRIVATE=True)
def test_one_trace_per_job_from_request_through_worker_and_webhooks(
    api: APIClient, spans: InMemorySpanExporter, http_server: Callable[..., LocalHTTPServer]
) -> None:
    KindSettings.objects.update_or_create(kind="hash", defaults={"callback_retries": 1, "callback_backoff": 0.05})
    receiver = http_server(scripted_statuses(500, 200))
    job_id = api.post("/api/v1/jobs/async/", {**HASH, "callback_url": receiver.url}, format="json").json()["id"]
    run_worker_burst()
    drain_callbacks()
    finished = spans.get_finished_spans()
    by_name = {span.name: span for span in finished}
    request = next(span for span in finished if "jobs/async" in span.name)
    enqueue, run = by_name["job.enqueue"], by_name["job.run"]
    deliveries = sorted(
        (s for s in finished if s.name == "webhook.deliver"), key=lambda s: s.attributes["webhook.attempt"]
    )
    trace_id = request.context.trace_id
    assert {span.context.trace_id for span in (enqueue, run, *deliveries)} == {trace_id}
    assert enqueue.parent.span_id == request.context.span_id
    assert run.parent.span_id == enqueue.context.span_id  # crossed into the worker through the RQ job's meta
    assert run.attributes["job.id"] == job_id
    assert [d.attributes["http.response.status_code"] for d in deliveries] == [500, 200]  # every attempt
    assert {d.parent.span_id for d in deliveries} == {enqueue.context.span_id}


def _metric_value(text: str, name: str, labels: dict[str, str]) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


@pytest.mark.django_db(transaction=True)
def test_metrics_move_as_jobs_run(api: APIClient) -> None:
    labels = {"kind": "hash", "mode": "async", "outcome": "succeeded"}
    before = api.get("/metrics").content.decode()
    api.post("/api/v1/jobs/async/", HASH, format="json")
    middle = api.get("/metrics").content.decode()
    assert _metric_value(middle, "jobsite_queue_depth", {"queue": "jobs"}) == 1
    run_worker_burst()
    after = api.get("/metrics").content.decode()
    assert (
        _metric_value(after, "jobsite_jobs_finished_total", labels)
        == _metric_value(before, "jobsite_jobs_finished_total", labels) + 1
    )
    assert _metric_value(after, "jobsite_job_run_seconds_count", {"kind": "hash"}) >= 1
    assert _metric_value(after, "jobsite_queue_depth", {"queue": "jobs"}) == 0


@pytest.mark.django_db(transaction=True)
@override_settings(CALLBACK_ALLOW_PRIVATE=True)
def test_metrics_of_limits_credits_cache_circuit_and_webhooks(
    api: APIClient, http_server: Callable[..., LocalHTTPServer]
) -> None:
    KindSettings.objects.update_or_create(kind="hash", defaults={"cache_algorithm": "lru", "cost": 3})
    before = api.get("/metrics").content.decode()

    def moved(name: str, labels: dict[str, str], text: str) -> float:
        return _metric_value(text, name, labels) - _metric_value(before, name, labels)

    assert api.post("/api/v1/jobs/sync/", HASH, format="json").status_code == 200
    assert api.post("/api/v1/jobs/sync/", HASH, format="json").json()["cached"] is True
    receiver = http_server(lambda request: respond(request, 200))
    api.post("/api/v1/jobs/async/", {**HASH, "callback_url": receiver.url, "input": {"data": "x"}}, format="json")
    queued = api.post("/api/v1/jobs/async/", {"kind": "hash", "input": {"data": "y"}}, format="json").json()["id"]
    api.post(f"/api/v1/jobs/{queued}/cancel/")
    run_worker_burst()
    drain_callbacks()
    EndpointPolicy.objects.update_or_create(
        name="jobs.sync", defaults={"rate_limit_algorithm": "fixed_window", "rate_limit": 1, "rate_window": 60}
    )
    clear_of_window_edge(60)
    assert api.post("/api/v1/jobs/sync/", HASH, format="json").status_code == 200
    assert api.post("/api/v1/jobs/sync/", HASH, format="json").status_code == 429
    after = api.get("/metrics").content.decode()
    assert moved("jobsite_cache_lookups_total", {"kind": "hash", "result": "hit"}, after) == 2
    assert moved("jobsite_credits_total", {"type": "charged"}, after) == 3 * 3  # sync miss + two async
    assert moved("jobsite_credits_total", {"type": "refunded"}, after) == 3  # the canceled one
    assert moved("jobsite_webhook_deliveries_total", {"outcome": "delivered", "attempt": "1"}, after) == 1
    assert (
        moved("jobsite_rate_limit_rejections_total", {"endpoint": "jobs.sync", "algorithm": "fixed_window"}, after) == 1
    )
    for state in ("closed", "open", "half_open"):  # one breaker per fetch target host; no fetch ran
        assert _metric_value(after, "jobsite_circuit_state", {"kind": "fetch", "state": state}) == 0


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_one_scrape_shows_what_the_worker_processes_did(
    server_url: str, user: User, start_worker: Callable[..., Any]
) -> None:
    """gunicorn and a real rqworker share PROMETHEUS_MULTIPROC_DIR: /metrics on the web side counts the worker's runs."""
    labels = {"kind": "hash", "mode": "async", "outcome": "succeeded"}
    with httpx.Client(base_url=server_url, headers=auth_headers(user), timeout=10) as client:
        before = client.get("/metrics").text
        ids = [
            client.post("/api/v1/jobs/async/", json={**HASH, "input": {"data": f"m{i}"}}).json()["id"] for i in range(3)
        ]
        start_worker()
        wait_until(lambda: Job.objects.filter(pk__in=ids, status=JobStatus.SUCCEEDED).count() == 3, timeout=30)
        after = client.get("/metrics").text
    assert (
        _metric_value(after, "jobsite_jobs_finished_total", labels)
        - _metric_value(before, "jobsite_jobs_finished_total", labels)
        == 3
    )
    worker_runs = {"kind": "hash", "queue": "jobs", "priority": "normal"}  # not the web process's (sync) series
    run_counts = _metric_value(after, "jobsite_job_run_seconds_count", worker_runs)
    assert run_counts - _metric_value(before, "jobsite_job_run_seconds_count", worker_runs) == 3


@contextlib.contextmanager
def logs_at(level: str) -> Iterator[io.StringIO]:
    """The production logging configuration (JSON, at `level`) writing into a buffer the test reads."""
    stream = io.StringIO()
    config = logging_config(level, "json")
    config["handlers"]["console"]["stream"] = stream
    config["root"]["handlers"] = ["console"]
    root, rq_worker = logging.getLogger(), logging.getLogger("rq.worker")
    saved = root.handlers[:], root.level, rq_worker.filters[:], rq_worker.level
    rq_worker.filters.clear()  # dictConfig adds a logger's filters to those it has (the settings' at startup)
    logging.config.dictConfig(config)
    try:
        yield stream
    finally:
        root.handlers[:], level_before, rq_worker.filters[:], rq_level = saved
        root.setLevel(level_before)
        rq_worker.setLevel(rq_level)


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    with logs_at("DEBUG") as stream:
        yield stream


def _records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("level", "rq_lines"), [("INFO", 0), ("DEBUG", 3)])
def test_rqs_lines_of_every_job_are_left_to_the_job_finished_line(api: APIClient, level: str, rq_lines: int) -> None:
    job_id = api.post("/api/v1/jobs/async/", HASH, format="json").json()["id"]
    queue = queues.get_queue(queues.JOBS_QUEUE)
    with logs_at(level) as stream:
        ResilientWorker([queue], connection=queue.connection, queue_class=PoolQueue).work(burst=True)
    records = _records(stream)
    finished = [record for record in records if record["event"] == "job finished"]
    assert [(record["job_id"], record["status"]) for record in finished] == [(job_id, "succeeded")]
    per_job = [r for r in records if r["logger"] == "rq.worker" and r["level"] == "info" and job_id in r["event"]]
    assert len(per_job) == rq_lines  # dequeued, Job OK, successfully completed
    assert any(r["logger"] == "rq.worker" and "done, quitting" in r["event"] for r in records)  # the rest stays


@pytest.mark.django_db(transaction=True)
def test_log_records_carry_request_user_job_and_endpoint(api: APIClient, user: User, json_logs: io.StringIO) -> None:
    sync = api.post("/api/v1/jobs/sync/", HASH, format="json", HTTP_X_REQUEST_ID="req-42")
    assert sync["X-Request-ID"] == "req-42"
    queued = api.post("/api/v1/jobs/async/", {**HASH, "input": {"data": "later"}}, format="json").json()["id"]
    run_worker_burst()
    records = _records(json_logs)
    finished = {record["job_id"]: record for record in records if record["event"] == "job finished"}
    web = finished[sync.json()["id"]]
    assert (web["request_id"], web["user_id"], web["endpoint"]) == ("req-42", user.pk, "jobs.sync")
    worker = finished[queued]
    assert (worker["user_id"], worker["endpoint"]) == (user.pk, "jobs.async") and "request_id" not in worker


def test_secrets_are_redacted_in_every_record(json_logs: io.StringIO) -> None:
    secrets = ["jsk_ab12cd.0123456789abcdefghij", "whsec_c2VjcmV0LXNpZ25pbmcta2V5", "123456"]
    logging.getLogger("django.request").warning("Authorization: Bearer %s", secrets[0])
    logging.getLogger("thirdparty").info("signing with %s", secrets[1])
    get_logger("jobs").info("mfa", mfa_code=secrets[2], headers={"X-MFA-Code": secrets[2], "Accept": "json"})
    get_logger("jobs").info("key", api_key=secrets[0], password="hunter2", job_id="j-1")
    output = json_logs.getvalue()
    for secret in [*secrets, "hunter2"]:
        assert secret not in output
    records = [json.loads(line) for line in output.splitlines()]
    assert len(records) == 4
    assert records[2]["headers"] == {"X-MFA-Code": REDACTED, "Accept": "json"}
    assert records[3]["job_id"] == "j-1"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("Authorization: Bearer abc.def-123", f"Authorization: Bearer {REDACTED}"),
        ("basic Zm9vOmJhcg==", f"basic {REDACTED}"),
        ("signing with whsec_c2VjcmV0", f"signing with {REDACTED}"),
        ("key jsk_ab12cd.0123456789abcdef", f"key jsk_ab12cd.{REDACTED}"),
        ("token gAAAAA" + "b" * 24, f"token {REDACTED}"),
        ('{"X-MFA-Code": "123456"}', f'{{"X-MFA-Code": "{REDACTED}"}}'),
        ("sig v1," + "c" * 24, f"sig {REDACTED}"),
        ("GET HTTPS://h.example/p?token=t&x=1 done", f"GET HTTPS://h.example/p?{REDACTED} done"),
    ],
)
def test_every_kind_of_secret_inside_a_text_is_redacted(text: str, shown: str) -> None:
    """Each pattern on its own: the one-pass check that lets a secret-free string through must not let one by."""
    assert redact(None, "info", {"event": text, "status": "succeeded"}) == {"event": shown, "status": "succeeded"}


@override_settings(CALLBACK_ALLOW_PRIVATE=True)  # the target is a receiver on 127.0.0.1
def test_outbound_urls_are_logged_without_query_strings(
    json_logs: io.StringIO, http_server: Callable[..., LocalHTTPServer]
) -> None:
    """Regression: httpx logs every outbound request at INFO, query string (tokens) and all."""
    server = http_server(lambda request: respond(request, 200, b"ok"))
    with ssrf.guarded_stream("GET", f"{server.url}/hook?token=s3cr3t-query&x=1") as response:
        response.read()
    output = json_logs.getvalue()
    [line] = [json.loads(row)["event"] for row in output.splitlines() if "HTTP Request" in row]
    assert line.startswith(f"HTTP Request: GET {server.url}/hook?{REDACTED}")
    assert "s3cr3t-query" not in output


@pytest.mark.django_db(transaction=True)
def test_without_an_exporter_requests_make_no_span_but_jobs_still_do(
    api: APIClient, job_spans: InMemorySpanExporter
) -> None:
    assert api.post("/api/v1/jobs/sync/", HASH, format="json").status_code == 200

    assert [span.name for span in job_spans.get_finished_spans()] == ["job.run"]

"""Traces, metrics and logs: what operators see."""

import io
import json
import logging
import logging.config

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from jobsite.logs import REDACTED, get_logger, logging_config
from tests.conftest import run_worker_burst

HASH = {"kind": "hash", "input": {"data": "trace me", "iterations": 10}}


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    trace.get_tracer_provider().add_span_processor(processor)
    yield exporter
    processor.shutdown()


@pytest.mark.django_db(transaction=True)
def test_one_trace_per_job_from_request_through_worker(api: APIClient, spans: InMemorySpanExporter) -> None:
    job_id = api.post("/api/v1/jobs/async/", HASH, format="json").json()["id"]
    run_worker_burst()
    finished = {span.name: span for span in spans.get_finished_spans()}
    request = next(span for name, span in finished.items() if "jobs/async" in name)
    enqueue, run = finished["job.enqueue"], finished["job.run"]
    assert {request.context.trace_id, enqueue.context.trace_id, run.context.trace_id} == {request.context.trace_id}
    assert enqueue.parent.span_id == request.context.span_id
    assert run.parent.span_id == enqueue.context.span_id  # crossed into the worker through the RQ job's meta
    assert run.attributes["job.id"] == job_id


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


def test_secrets_are_redacted_in_every_record() -> None:
    stream = io.StringIO()
    config = logging_config("DEBUG", "json")
    config["handlers"]["console"]["stream"] = stream
    config["root"]["handlers"] = ["console"]
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logging.config.dictConfig(config)
    try:
        secrets = ["jsk_ab12cd.0123456789abcdefghij", "whsec_c2VjcmV0LXNpZ25pbmcta2V5", "123456"]
        logging.getLogger("django.request").warning("Authorization: Bearer %s", secrets[0])
        logging.getLogger("thirdparty").info("signing with %s", secrets[1])
        get_logger("jobs").info("mfa", mfa_code=secrets[2], headers={"X-MFA-Code": secrets[2], "Accept": "json"})
        get_logger("jobs").info("key", api_key=secrets[0], password="hunter2", job_id="j-1")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    output = stream.getvalue()
    for secret in [*secrets, "hunter2"]:
        assert secret not in output
    records = [json.loads(line) for line in output.splitlines()]
    assert len(records) == 4
    assert records[2]["headers"] == {"X-MFA-Code": REDACTED, "Accept": "json"}
    assert records[3]["job_id"] == "j-1"

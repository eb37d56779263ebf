"""The job lifecycle in one process (issue 19): what a submission may subscribe to, the Prefer header, a web
process that holds all the requests it may, the progress throttle and the job's event stream in Redis.

Across processes (gunicorn, RQ workers, a receiver): tests/test_job_lifecycle.py."""

import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from django.test.utils import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import User
from credits.selectors import credit_balance
from jobs.events import STREAM_START, held_request_release, held_request_take, job_events_read
from jobs.kinds import KINDS, RunContext
from jobs.kinds.hash import STEP_ITERATIONS
from jobs.models import Job, JobMode, JobStatus
from jobs.progress import ProgressReporter
from jobs.views import prefer_wait
from tests.conftest import LocalHTTPServer, run_worker_burst

pytestmark = pytest.mark.django_db(transaction=True)

HASH = {"kind": "hash", "input": {"data": "events", "iterations": 10}}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**HASH, "webhook_events": ["job.started"]}, "webhook_events"),  # no callback_url to send them to
        ({**HASH, "callback_url": "https://example.com/h", "webhook_events": ["job.finished"]}, "webhook_events.0"),
        ({**HASH, "callback_url": "https://example.com/h", "webhook_events": ["job.started"] * 2}, "webhook_events"),
        ({**HASH, "callback_url": "https://example.com/h", "webhook_events": "job.started"}, "webhook_events"),
    ],
)
def test_webhook_events_are_checked_and_nothing_is_charged(
    api: APIClient, user: User, body: dict[str, Any], field: str
) -> None:
    before = credit_balance(user=user)
    response = api.post("/api/v1/jobs/async/", body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "validation_error"
    assert [error["field"] for error in response.json()["errors"]] == [field]
    assert credit_balance(user=user) == before and not Job.objects.exists()


def test_sync_jobs_take_no_webhook_events(api: APIClient) -> None:
    response = api.post("/api/v1/jobs/sync/", {**HASH, "webhook_events": ["job.progress"]}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"] == [{"field": "webhook_events", "message": "Only async jobs take webhook_events."}]


def test_subscribed_events_are_recorded_and_shown(api: APIClient) -> None:
    body = {**HASH, "callback_url": "https://example.com/h", "webhook_events": ["job.progress", "job.started"]}
    response = api.post("/api/v1/jobs/async/", body, format="json")
    assert response.status_code == 202, response.content
    assert response.json()["callback"]["events"] == ["job.progress", "job.started"]
    assert Job.objects.get(pk=response.json()["id"]).webhook_events == "job.progress,job.started"


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("wait=5", 5),
        ("respond-async, wait=10", 10),
        ("Wait = 3 ; x=y", 3),
        ('wait="7"', 7),
        ("wait=2, wait=9", 2),  # RFC 7240: the first one counts
        ("wait=-1", None),
        ("wait=soon", None),
        ("wait=²", None),  # a digit to str.isdigit, not a number
        ("wait=99999999999999", None),
        ("handling=lenient", None),
        ("", None),
    ],
)
def test_prefer_wait_is_read_as_rfc_7240_says(header: str, seconds: int | None) -> None:
    assert prefer_wait(header) == seconds


def test_a_process_holding_all_it_may_answers_at_once(api: APIClient) -> None:
    """Waits and streams take a slot of HELD_REQUESTS_PER_PROCESS; with none free, a wait is not applied (202 at
    once, no Preference-Applied) and a stream is refused with 503."""
    taken = 0
    while held_request_take():
        taken += 1
    try:
        assert taken >= 1
        response = api.post("/api/v1/jobs/async/", HASH, format="json", HTTP_PREFER="wait=30")
        assert response.status_code == 202 and not response.has_header("Preference-Applied")
        assert response["Retry-After"] == "1" and "Prefer" in response["Vary"]
        stream = api.get(f"/api/v1/jobs/{response.json()['id']}/events/", HTTP_ACCEPT="text/event-stream")
        assert stream.status_code == 503 and stream.json()["code"] == "service_unavailable"
    finally:
        for _ in range(taken):
            held_request_release()


@pytest.mark.parametrize("last_event_id", ["x", "\u0661-\u0661", "18446744073709551616-0", "final "])
def test_a_last_event_id_not_sent_by_a_stream_is_refused(api: APIClient, last_event_id: str) -> None:
    job_id = api.post("/api/v1/jobs/async/", HASH, format="json").json()["id"]
    response = api.get(f"/api/v1/jobs/{job_id}/events/", HTTP_LAST_EVENT_ID=last_event_id)
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "Last-Event-ID"


def test_a_wait_for_a_job_final_already_answers_200_at_once(api: APIClient) -> None:
    queued = api.post("/api/v1/jobs/async/", HASH, format="json").json()
    run_worker_burst()  # the job finishes, and its final event is in Redis
    held = api.get(f"/api/v1/jobs/{queued['id']}/", HTTP_PREFER="wait=30")
    assert held.status_code == 200 and held.json()["status"] == "succeeded"
    assert held["Preference-Applied"] == "wait=30" and not held.has_header("Retry-After")
    events = job_events_read(queued["id"], after=STREAM_START)
    assert [(event.event, event.data["status"]) for event in events] == [("status", "running"), ("final", "succeeded")]


def test_a_replayed_202_keeps_retry_after(api: APIClient) -> None:
    key = str(uuid.uuid4())
    first = api.post("/api/v1/jobs/async/", HASH, format="json", HTTP_IDEMPOTENCY_KEY=key)
    replay = api.post("/api/v1/jobs/async/", HASH, format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert (first.status_code, replay.status_code, replay["Idempotent-Replayed"]) == (202, 202, "true")
    assert replay["Retry-After"] == first["Retry-After"] == "1" and replay["Location"] == first["Location"]


def _running_job(user: User) -> Job:
    now = timezone.now()
    return Job.objects.create(
        owner=user, endpoint="jobs.async", kind="hash", mode=JobMode.ASYNC, status=JobStatus.RUNNING, attempts=1,
        started_at=now, created_at=now,
    )  # fmt: skip


@override_settings(PROGRESS_MIN_INTERVAL=0, PROGRESS_MIN_STEP=0.05)
def test_progress_is_recorded_per_step_and_told_on_the_job_stream(user: User) -> None:
    job = _running_job(user)
    report = ProgressReporter(job)
    for fraction in (0.01, 0.04, 0.06, 0.07, 0.5, 0.52):
        report(fraction, f"at {fraction}")
    stored = Job.objects.get(pk=job.pk).progress
    assert (stored["fraction"], stored["message"]) == (0.5, "at 0.5") and stored["updated_at"]
    events = job_events_read(job.pk, after=STREAM_START)
    assert [event.data["progress"]["fraction"] for event in events] == [0.06, 0.5]
    assert {event.event for event in events} == {"progress"}
    # A report of unknown extent (no Content-Length) still records, by time alone.
    report(None, "2048 bytes read")
    assert Job.objects.get(pk=job.pk).progress["fraction"] is None


@override_settings(PROGRESS_MIN_INTERVAL=3600)
def test_progress_of_a_short_run_records_nothing(user: User) -> None:
    job = _running_job(user)
    ProgressReporter(job)(0.9, "almost")
    assert Job.objects.get(pk=job.pk).progress is None and job_events_read(job.pk, after=STREAM_START) == []


@override_settings(PROGRESS_MIN_INTERVAL=0)
def test_progress_of_an_attempt_that_lost_the_job_is_dropped(user: User) -> None:
    job = _running_job(user)
    Job.objects.filter(pk=job.pk).update(status=JobStatus.QUEUED)  # the reconciler took it back
    ProgressReporter(job)(0.5, "half")
    assert Job.objects.get(pk=job.pk).progress is None and job_events_read(job.pk, after=STREAM_START) == []


def _body_in_parts(*, announce_length: bool) -> Callable[[BaseHTTPRequestHandler], None]:
    def answer(request: BaseHTTPRequestHandler) -> None:
        request.send_response(200)
        if announce_length:
            request.send_header("Content-Length", str(len(BODY_PART) * 4))
        else:
            request.close_connection = True  # the body ends with the connection
        request.end_headers()
        for _ in range(4):
            request.wfile.write(BODY_PART)
            request.wfile.flush()

    return answer


BODY_PART = b"x" * 1024


@pytest.mark.parametrize("announce_length", [True, False], ids=["content-length", "no-length"])
def test_fetch_reports_the_bytes_read(
    settings: Any, http_server: Callable[..., LocalHTTPServer], announce_length: bool
) -> None:
    settings.CALLBACK_ALLOW_PRIVATE = True
    server = http_server(_body_in_parts(announce_length=announce_length))
    reports: list[tuple[float | None, str]] = []
    context = RunContext(owner_id=0, job_id="t", progress=lambda fraction, message: reports.append((fraction, message)))
    result = KINDS["fetch"].run({"url": f"{server.url}/parts"}, context)
    assert result["bytes"] == 4096 and reports
    assert reports[-1][1] == "4096 bytes read"
    fractions = [fraction for fraction, _ in reports]
    if announce_length:
        assert fractions[-1] == 1.0 and fractions == sorted(fractions)
    else:
        assert set(fractions) == {None}


def test_hash_reports_at_its_steps() -> None:
    reports: list[tuple[float | None, str]] = []
    context = RunContext(owner_id=0, job_id="t", progress=lambda fraction, message: reports.append((fraction, message)))
    KINDS["hash"].run({"data": "steps", "iterations": 3 * STEP_ITERATIONS}, context)
    assert reports == [(step / 3, f"{step * STEP_ITERATIONS} of {3 * STEP_ITERATIONS} iterations") for step in range(3)]

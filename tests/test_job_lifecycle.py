"""The job lifecycle through HTTP against gunicorn and real RQ workers (issue 19): Prefer: wait, Retry-After,
progress while a job runs, Server-Sent Events with Last-Event-ID resume and caps, started/progress webhooks."""

import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest

from accounts.models import User
from credits.models import LedgerEntry
from credits.selectors import credit_balance
from tests import conftest
from tests.access_helpers import set_policy
from tests.conftest import ROOT, LocalHTTPServer, gunicorn_server, respond
from tests.job_helpers import kind_settings
from tests.waiting import wait_until

sys.path.insert(0, str(ROOT / "jobsite-client"))  # until requirements-dev installs ./jobsite-client

import jobsite_client as jc

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

LONG_HASH = 3_000_000
"""Iterations of a hash that runs for seconds (this module's server admits them)."""

STREAM_SECONDS = 2.0
"""This module's STREAM_MAX_SECONDS: streams end (and are resumed) within a test."""


@pytest.fixture(scope="module")
def lifecycle_url(django_db_setup: None, django_db_blocker: Any) -> Iterator[str]:
    """A gunicorn whose streams end after STREAM_SECONDS, beat every 0.3 s, and which admits long hashes."""
    with gunicorn_server(
        "test-lifecycle",
        STREAM_MAX_SECONDS=str(STREAM_SECONDS),
        STREAM_HEARTBEAT_SECONDS="0.3",
        HASH_MAX_ITERATIONS=str(LONG_HASH),
    ) as url:
        yield url


@pytest.fixture
def http_of(lifecycle_url: str) -> Iterator[Callable[[User], httpx.Client]]:
    """An httpx client on the module's server, authenticated as the user with a fresh all-scopes key."""
    clients: list[httpx.Client] = []

    def make(user: User) -> httpx.Client:
        clients.append(httpx.Client(base_url=lifecycle_url, headers=conftest.auth_headers(user), timeout=60))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


@dataclass
class SseEvent:
    event: str
    id: str
    data: dict[str, Any]


@dataclass
class SseRead:
    """What one stream sent: its events, comment lines, and `retry:` if it ended with one."""

    status: int
    events: list[SseEvent] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: int | None = None


def read_stream(http: httpx.Client, job_id: str, last_event_id: str | None = None) -> SseRead:
    """One stream, read to its end (httpx streaming), parsed per the SSE format."""
    headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last_event_id} if last_event_id else {})}
    with http.stream("GET", f"/api/v1/jobs/{job_id}/events/", headers=headers) as response:
        read = SseRead(status=response.status_code)
        if response.status_code != 200:
            response.read()
            return read
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in response.iter_lines():
            if line.startswith(":"):
                read.comments.append(line)
            elif line:
                name, _, value = line.partition(": ")
                fields[name] = value
            elif "retry" in fields:
                read.retry = int(fields.pop("retry"))
            elif fields:
                read.events.append(SseEvent(fields["event"], fields["id"], json.loads(fields["data"])))
                fields = {}
    return read


def _held_target(http_server: Callable[..., LocalHTTPServer]) -> tuple[LocalHTTPServer, threading.Event]:
    """A fetch target that answers only once the test sets the event: a job that runs as long as the test says."""
    release = threading.Event()

    def answer(request: BaseHTTPRequestHandler) -> None:
        release.wait(30)
        respond(request, 200, b"done", {"Content-Type": "text/plain"})

    return http_server(answer), release


def test_prefer_wait_answers_200_when_the_job_finishes_in_time_else_202(
    http_of: Callable[[User], httpx.Client],
    make_user: Callable[..., User],
    start_worker: Callable[..., Any],
    http_server: Callable[..., LocalHTTPServer],
    fresh_policies: None,
) -> None:
    user = make_user()
    http = http_of(user)
    kind_settings("fetch", typical_run_seconds=3)
    set_policy("jobs.async", max_wait_seconds=1)
    target, release = _held_target(http_server)
    start_worker("jobs")
    before = credit_balance(user=user)

    # The target holds the job: the wait (asked 60, capped to the policy's 1 s) ends with 202.
    started = time.monotonic()
    held = http.post(
        "/api/v1/jobs/async/",
        json={"kind": "fetch", "input": {"url": f"{target.url}/slow"}},
        headers={"Prefer": "wait=60"},
    )
    waited = time.monotonic() - started
    assert held.status_code == 202, held.text
    body = held.json()
    assert body["status"] in ("queued", "running") and body["result"] is None
    assert held.headers["Location"] == f"/api/v1/jobs/{body['id']}/"
    assert held.headers["Retry-After"] == "3"  # the kind's typical run time
    assert held.headers["Preference-Applied"] == "wait=1"
    assert "prefer" in held.headers["Vary"].lower()
    assert 0.9 <= waited < 10

    # Released in time: 200 with the final job, the wait applied said.
    set_policy("jobs.async", max_wait_seconds=30)
    release.set()
    finished = http.post(
        "/api/v1/jobs/async/",
        json={"kind": "fetch", "input": {"url": f"{target.url}/fast"}},
        headers={"Prefer": "wait=20"},
    )
    assert finished.status_code == 200, finished.text
    assert finished.headers["Preference-Applied"] == "wait=20"
    job = finished.json()
    assert (job["status"], job["result"]["status_code"], job["mode"]) == ("succeeded", 200, "async")
    assert "Location" not in finished.headers

    # Without Prefer, nothing changes: 202 at once, Retry-After besides Location, no Preference-Applied.
    plain = http.post("/api/v1/jobs/async/", json={"kind": "fetch", "input": {"url": f"{target.url}/plain"}})
    assert plain.status_code == 202 and plain.headers["Retry-After"] == "3"
    assert "Preference-Applied" not in plain.headers

    # One job, one charge, whichever the answer.
    cost = job["cost"]
    wait_until(lambda: http.get(f"/api/v1/jobs/{plain.json()['id']}/").json()["status"] == "succeeded")
    assert credit_balance(user=user) == before - 3 * cost
    charges = LedgerEntry.objects.filter(account__user=user, type="charge")
    assert sorted(str(entry.job_id) for entry in charges) == sorted([body["id"], job["id"], plain.json()["id"]])

    # The detail of the first job long-polls too: held until final (it is, now), then 200 at once.
    detail = http.get(f"/api/v1/jobs/{body['id']}/", headers={"Prefer": "wait=20"})
    assert detail.status_code == 200 and detail.json()["status"] == "succeeded"
    assert detail.headers["Preference-Applied"] == "wait=20" and "Retry-After" not in detail.headers


def test_progress_is_visible_while_a_long_hash_runs_and_streamed_with_resume(
    http_of: Callable[[User], httpx.Client], make_user: Callable[..., User], start_worker: Callable[..., Any]
) -> None:
    http = http_of(make_user())
    start_worker("jobs")
    submitted = http.post(
        "/api/v1/jobs/async/", json={"kind": "hash", "input": {"data": f"long {uuid.uuid4()}", "iterations": LONG_HASH}}
    )
    assert submitted.status_code == 202
    job_id = submitted.json()["id"]

    def running_with_progress() -> dict[str, Any] | None:
        job = http.get(f"/api/v1/jobs/{job_id}/").json()
        return job if job["status"] == "running" and job["progress"] else None

    running = wait_until(running_with_progress, timeout=60, interval=0.05)
    progress = running["progress"]
    assert 0 < progress["fraction"] < 1
    assert progress["message"].endswith(f"of {LONG_HASH} iterations") and progress["updated_at"]

    # Streams from the start: everything so far, then more, each stream ending with retry: while the job runs;
    # each reconnect (Last-Event-ID) resumes after the last event, never repeating one.
    seen: list[SseEvent] = []
    last_event_id = None
    for _ in range(60):
        read = read_stream(http, job_id, last_event_id)
        assert read.status == 200
        seen += read.events
        if read.events:
            last_event_id = read.events[-1].id
        if read.events and read.events[-1].event == "job":
            assert read.retry is None
            break
        assert read.retry == 1000  # the stream's time limit: EventSource reconnects
    ids = [event.id for event in seen]
    assert len(ids) == len(set(ids)), "an event was sent twice"
    assert seen[0].event == "status" and seen[0].data["status"] == "running"
    progresses = [event.data["progress"]["fraction"] for event in seen if event.event == "progress"]
    assert len(progresses) >= 2 and progresses == sorted(progresses)
    assert all(event.data["id"] == job_id for event in seen[:-1])
    final = seen[-1]
    assert (final.event, final.id, final.data["id"], final.data["status"]) == ("job", "final", job_id, "succeeded")
    assert final.data["result"]["iterations"] == LONG_HASH
    # After the final event there is nothing more: 204 ends EventSource's reconnecting.
    assert read_stream(http, job_id, "final").status == 204


def test_a_stream_beats_and_ends_in_time_and_streams_are_capped_per_user(
    http_of: Callable[[User], httpx.Client],
    make_user: Callable[..., User],
    lifecycle_url: str,
    fresh_policies: None,
) -> None:
    owner = make_user()
    http = http_of(owner)
    queued = http.post("/api/v1/jobs/async/", json={"kind": "hash", "input": {"data": "no worker"}}).json()
    # No worker: nothing happens, so the stream tells the state, beats, and ends at STREAM_MAX_SECONDS.
    started = time.monotonic()
    read = read_stream(http, queued["id"])
    assert STREAM_SECONDS <= time.monotonic() - started < STREAM_SECONDS + 5
    assert [(event.event, event.id, event.data["status"]) for event in read.events] == [("status", "0-0", "queued")]
    assert read.comments and set(read.comments) == {": keep-alive"} and read.retry == 1000

    # Another user: the job is not theirs (404, as its detail); a malformed Last-Event-ID: 400.
    stranger = http_of(make_user())
    assert read_stream(stranger, queued["id"]).status == 404
    bad = http.get(f"/api/v1/jobs/{queued['id']}/events/", headers={"Last-Event-ID": "x; drop"})
    assert bad.status_code == 400 and bad.json()["code"] == "validation_error"

    # The cap: one open stream per user here; a second is 429 problem+json until the first ends.
    set_policy("jobs.read", max_streams_per_user=1)
    opened = threading.Event()
    holder_headers = conftest.auth_headers(owner)
    statuses: list[int] = []

    def hold_one() -> None:
        with (
            httpx.Client(base_url=lifecycle_url, headers=holder_headers, timeout=30) as client,
            client.stream("GET", f"/api/v1/jobs/{queued['id']}/events/") as response,
        ):
            statuses.append(response.status_code)
            opened.set()
            for _ in response.iter_lines():
                pass

    holder = threading.Thread(target=hold_one)
    holder.start()
    assert opened.wait(10) and statuses == [200]
    refused = http.get(f"/api/v1/jobs/{queued['id']}/events/")
    assert refused.status_code == 429, refused.text
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert refused.json()["code"] == "too_many_streams" and int(refused.headers["Retry-After"]) >= 1
    holder.join(STREAM_SECONDS + 10)
    assert read_stream(http, queued["id"]).status == 200  # the ended stream gave its lease back


def test_started_and_progress_webhooks_are_signed_and_the_final_one_is_unchanged(
    http_of: Callable[[User], httpx.Client],
    make_user: Callable[..., User],
    start_worker: Callable[..., Any],
    http_server: Callable[..., LocalHTTPServer],
) -> None:
    user = make_user()
    http = http_of(user)
    secret = http.post("/api/v1/me/webhook-secret/").json()["secret"]
    received: list[jc.WebhookEvent] = []
    refused: list[str] = []

    def receive(request: BaseHTTPRequestHandler) -> None:
        delivery = receiver.requests[-1]
        try:
            received.append(jc.verify_webhook(delivery["body"], delivery["headers"], secret))
        except jc.InvalidWebhook as exc:
            refused.append(str(exc))
        respond(request, 204)

    receiver = http_server(receive)
    start_worker("jobs")
    start_worker("callbacks")  # apart: events are sent while the job worker is busy with the job
    submitted = http.post(
        "/api/v1/jobs/async/",
        json={
            "kind": "hash",
            "input": {"data": f"events {uuid.uuid4()}", "iterations": LONG_HASH},
            "callback_url": f"{receiver.url}/hook",
            "webhook_events": ["job.started", "job.progress"],
        },
    )
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    assert submitted.json()["callback"]["events"] == ["job.started", "job.progress"]

    def final_webhook() -> jc.WebhookEvent | None:
        return next((event for event in received if "type" not in event.data), None)

    final = wait_until(final_webhook, timeout=90)
    assert refused == []
    assert final.job.id == job_id and final.job.status == "succeeded"  # the job itself, as before
    deliveries = http.get("/api/v1/me/webhook-deliveries/", params={"job_id": job_id}).json()["results"]
    assert [delivery["webhook_id"] for delivery in deliveries] == [final.id]  # the final webhook's own id
    by_type: dict[str, list[jc.WebhookEvent]] = {}
    for event in received:
        by_type.setdefault(event.data.get("type", "final"), []).append(event)
    (started,) = by_type["job.started"]
    assert started.data["data"]["id"] == job_id and started.data["data"]["status"] == "running"
    parsed = jc.parse(jc.JobWebhookEvent, started.data)
    assert parsed.data.attempts == 1 and parsed.type == "job.started"
    progress = by_type["job.progress"]
    assert progress, "no progress webhook while the job ran"
    for event in progress:
        fraction = event.data["data"]["progress"]["fraction"]
        assert 0 < fraction < 1 and event.data["data"]["id"] == job_id
    ids = [event.id for event in received]
    assert len(ids) == len(set(ids)), "webhook-id is unique per event"
    job = http.get(f"/api/v1/jobs/{job_id}/").json()
    assert [attempt["n"] for attempt in job["callback"]["attempts"]] == [1]  # the final webhook's alone


def test_the_client_submits_with_a_wait_and_follows_events_across_streams(
    lifecycle_url: str, make_user: Callable[..., User], start_worker: Callable[..., Any]
) -> None:
    key = conftest.auth_headers(make_user())["Authorization"].removeprefix("Bearer ")
    start_worker("jobs")
    with jc.Client(lifecycle_url, key) as client:
        done = client.submit("hash", {"data": f"client {uuid.uuid4()}", "iterations": 10}, wait=20)
        assert (done.status, done.finished, done.progress) == ("succeeded", True, None)
        long = client.submit("hash", {"data": f"client long {uuid.uuid4()}", "iterations": LONG_HASH})
        assert long.status == "queued"
        events = list(client.events(long.id))  # streams end every STREAM_SECONDS: the client resumes
    assert len({event.id for event in events}) == len(events)
    assert events[-1].event == "job" and events[-1].job.status == "succeeded"
    fractions = [event.job_event.progress.fraction for event in events if event.event == "progress"]
    assert fractions and fractions == sorted(fractions)
    assert all(event.job_event.id == long.id for event in events[:-1])

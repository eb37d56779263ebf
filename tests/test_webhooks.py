"""Webhooks against a real local receiver that verifies signatures with the standardwebhooks verifier."""

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any
from uuid import UUID

import pytest
from django.db import connection, connections, transaction
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient
from standardwebhooks.webhooks import Webhook

from accounts.models import User
from jobs import queues, ssrf
from jobs.models import CallbackAttempt, CallbackStatus, Job, KindSettings, WebhookSecret
from jobs.webhooks import webhook_delivery_restart, webhook_retry_delay, webhooks_reconcile
from jobsite import crypto
from jobsite.redis import get_redis
from tests.conftest import respond, run_worker_burst
from tests.processes import free_port
from tests.waiting import wait_until
from tests.webhook_helpers import FakeDNS, drain_callbacks, hold_host_leases

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.usefixtures("fast_retries"),
]

HASH = {"kind": "hash", "input": {"data": "hello", "iterations": 10}}


@pytest.fixture
def fast_retries() -> Iterator[None]:
    # The schedule at 1/1000: 5 ms, 0.3 s, 1.8 s...
    KindSettings.objects.update_or_create(kind="hash", defaults={"callback_retries": 3, "callback_backoff": 0.001})
    with override_settings(CALLBACK_ALLOW_PRIVATE=True, CALLBACK_READ_TIMEOUT=0.5, CALLBACK_CONNECT_TIMEOUT=0.5):
        yield


@pytest.fixture
def secret(api: APIClient) -> str:
    response = api.post("/api/v1/me/webhook-secret/")
    assert response.status_code == 201
    return response.json()["secret"]


def scripted(*answers: Callable[[BaseHTTPRequestHandler], None]) -> Callable[[BaseHTTPRequestHandler], None]:
    """A receiver that gives the answers in order, then keeps giving the last."""
    calls = iter(range(10_000))

    def handler(request: BaseHTTPRequestHandler) -> None:
        answers[min(next(calls), len(answers) - 1)](request)

    return handler


def status(code: int, **headers: str) -> Callable[[BaseHTTPRequestHandler], None]:
    return lambda request: respond(request, code, b"receiver says no" if code >= 300 else b"ok", headers)


def submit_and_deliver(api: APIClient, url: str) -> Job:
    response = api.post("/api/v1/jobs/async/", {**HASH, "callback_url": url}, format="json")
    assert response.status_code == 202, response.content
    assert response.json()["callback"] == {"url": url, "status": "pending", "attempts": [], "events": []}
    run_worker_burst()
    drain_callbacks()
    return Job.objects.get(pk=response.json()["id"])


def verified(secret: str, request: dict[str, Any]) -> dict[str, Any]:
    """The body, if and only if the standardwebhooks verifier accepts the signature."""
    return Webhook(secret).verify(request["body"], request["headers"])


def callback_of(api: APIClient, job: Job) -> dict[str, Any]:
    return api.get(f"/api/v1/jobs/{job.id}/").json()["callback"]


@pytest.mark.django_db(transaction=True)
def test_delivered_first_try_signed(api: APIClient, secret: str, http_server) -> None:
    receiver = http_server(status(200))
    job = submit_and_deliver(api, receiver.url + "/hook")
    assert job.callback_status == CallbackStatus.DELIVERED
    [request] = receiver.requests
    assert request["method"] == "POST" and request["path"] == "/hook"
    assert request["headers"]["webhook-id"] == str(job.delivery_id)
    assert request["headers"]["webhook-signature"].startswith("v1,")
    body = verified(secret, request)
    assert body["id"] == str(job.id) and body["status"] == "succeeded" and body["result"]["iterations"] == 10
    [attempt] = callback_of(api, job)["attempts"]
    assert attempt["n"] == 1 and attempt["status_code"] == 200 and attempt["error"] == ""


@pytest.mark.django_db(transaction=True)
def test_cache_hit_async_job_still_delivers_its_webhook(api: APIClient, secret: str, http_server) -> None:
    KindSettings.objects.filter(kind="hash").update(cache_algorithm="lru")
    assert api.post("/api/v1/jobs/sync/", HASH, format="json").json()["cached"] is False
    receiver = http_server(status(200))
    response = api.post("/api/v1/jobs/async/", {**HASH, "callback_url": receiver.url}, format="json")
    assert response.json()["cached"] is True and response.json()["callback"]["status"] == "pending"
    drain_callbacks()
    [request] = receiver.requests
    assert verified(secret, request)["id"] == response.json()["id"]
    assert Job.objects.get(pk=response.json()["id"]).callback_status == CallbackStatus.DELIVERED


@pytest.mark.django_db(transaction=True)
def test_server_error_then_success_is_retried_with_the_same_id(api: APIClient, secret: str, http_server) -> None:
    receiver = http_server(scripted(status(500), status(200)))
    job = submit_and_deliver(api, receiver.url)
    assert job.callback_status == CallbackStatus.DELIVERED
    assert len(receiver.requests) == 2
    assert {request["headers"]["webhook-id"] for request in receiver.requests} == {str(job.delivery_id)}
    assert all(verified(secret, request)["id"] == str(job.id) for request in receiver.requests)
    attempts = callback_of(api, job)["attempts"]
    assert [(a["n"], a["status_code"]) for a in attempts] == [(1, 500), (2, 200)]
    assert attempts[0]["error"].startswith("HTTP 500: receiver says no")


@pytest.mark.django_db(transaction=True)
def test_gone_stops_retrying(api: APIClient, secret: str, http_server) -> None:
    receiver = http_server(status(410))
    job = submit_and_deliver(api, receiver.url)
    assert job.callback_status == CallbackStatus.FAILED
    assert len(receiver.requests) == 1
    assert [a["status_code"] for a in callback_of(api, job)["attempts"]] == [410]


@pytest.mark.django_db(transaction=True)
@override_settings(CALLBACK_READ_TIMEOUT=0.2)
def test_timeouts_are_retried_then_fail(api: APIClient, secret: str, http_server) -> None:
    KindSettings.objects.filter(kind="hash").update(callback_retries=2)

    answer = threading.Event()  # the receiver answers only once the test is done: every attempt times out

    def slow(request: BaseHTTPRequestHandler) -> None:
        answer.wait(30)
        respond(request, 200, b"too late")

    receiver = http_server(slow)
    try:
        job = submit_and_deliver(api, receiver.url)
    finally:
        answer.set()
    assert job.callback_status == CallbackStatus.FAILED
    attempts = callback_of(api, job)["attempts"]
    assert [a["n"] for a in attempts] == [1, 2, 3]
    assert all(a["status_code"] is None and a["error"].startswith("timeout") for a in attempts)
    assert all(a["duration_ms"] < 1000 for a in attempts)


@pytest.mark.django_db(transaction=True)
def test_redirect_is_not_followed(api: APIClient, secret: str, http_server) -> None:
    KindSettings.objects.filter(kind="hash").update(callback_retries=1)
    receiver = http_server(lambda request: respond(request, 307, headers={"Location": f"{receiver.url}/elsewhere"}))
    job = submit_and_deliver(api, receiver.url + "/hook")
    assert job.callback_status == CallbackStatus.FAILED
    assert [request["path"] for request in receiver.requests] == ["/hook", "/hook"]
    attempts = callback_of(api, job)["attempts"]
    assert [a["status_code"] for a in attempts] == [307, 307]
    assert "redirect not followed" in attempts[0]["error"]


@pytest.mark.django_db(transaction=True)
@override_settings(CALLBACK_MAX_RESPONSE_BYTES=1024)
def test_endless_body_is_cut_off(api: APIClient, secret: str, http_server) -> None:
    written = {"bytes": 0, "done": False}

    def endless(request: BaseHTTPRequestHandler) -> None:
        request.send_response(200)
        request.send_header("Content-Type", "application/octet-stream")
        request.end_headers()
        chunk = b"x" * 65536
        try:
            while written["bytes"] < 2**31:
                request.wfile.write(chunk)
                written["bytes"] += len(chunk)
        except OSError:
            written["done"] = True
        request.close_connection = True

    receiver = http_server(endless)
    started = time.monotonic()
    job = submit_and_deliver(api, receiver.url)
    assert time.monotonic() - started < 10
    assert job.callback_status == CallbackStatus.DELIVERED
    wait_until(lambda: written["done"])  # the sender hung up on the receiver
    assert written["bytes"] < 64 * 1024 * 1024
    assert callback_of(api, job)["attempts"][0]["status_code"] == 200


@pytest.mark.django_db(transaction=True)
def test_retry_after_is_honoured(api: APIClient, secret: str, http_server) -> None:
    receiver = http_server(scripted(status(503, **{"Retry-After": "2"}), status(200)))
    seen: list[float] = []
    original = receiver.handler
    receiver.handler = lambda request: (seen.append(time.monotonic()), original(request))
    job = submit_and_deliver(api, receiver.url)
    assert job.callback_status == CallbackStatus.DELIVERED
    assert seen[1] - seen[0] >= 1.5  # the schedule alone (5 ms) would have retried at once


ROTATION_WINDOW = 3
"""Seconds the rotation test's old secret keeps signing: its first delivery must fit in it, its second wait it out."""


@pytest.mark.django_db(transaction=True)
def test_rotation_signs_with_both_secrets_for_the_window(api: APIClient, user: User, http_server, settings) -> None:
    settings.WEBHOOK_SECRET_ROTATION_WINDOW = ROTATION_WINDOW
    old = api.post("/api/v1/me/webhook-secret/").json()["secret"]
    receiver = http_server(status(200))
    submit_and_deliver(api, receiver.url)  # the signing secrets are cached in this process now
    new = api.post("/api/v1/me/webhook-secret/").json()["secret"]
    assert old != new and new.startswith("whsec_")
    submit_and_deliver(api, receiver.url)
    request = receiver.requests[-1]
    assert len(request["headers"]["webhook-signature"].split(" ")) == 2
    assert verified(old, request) == verified(new, request)

    # The window ends with no write at all: the cached secrets stop signing on time by themselves.
    [ends] = WebhookSecret.objects.filter(user=user, expires_at__isnull=False).values_list("expires_at", flat=True)
    time.sleep(max(0.0, (ends - timezone.now()).total_seconds()) + 0.05)
    submit_and_deliver(api, receiver.url)
    request = receiver.requests[-1]
    assert len(request["headers"]["webhook-signature"].split(" ")) == 1
    verified(new, request)
    with pytest.raises(Exception, match="No matching signature"):
        verified(old, request)


def test_secret_endpoint_needs_a_user_and_stores_the_secret_encrypted(api: APIClient, user: User) -> None:
    assert APIClient().post("/api/v1/me/webhook-secret/").status_code in (401, 403)
    secret = api.post("/api/v1/me/webhook-secret/").json()["secret"]
    row = WebhookSecret.objects.get(user=user)
    assert secret not in row.secret_encrypted and "whsec_" not in row.secret_encrypted
    assert crypto.decrypt(row.secret_encrypted) == secret


@pytest.mark.django_db(transaction=True)
def test_user_without_secret_gets_one_at_first_delivery(api: APIClient, user: User, http_server) -> None:
    receiver = http_server(status(200))
    job = submit_and_deliver(api, receiver.url)
    assert job.callback_status == CallbackStatus.DELIVERED
    [row] = WebhookSecret.objects.filter(user=user)
    verified(crypto.decrypt(row.secret_encrypted), receiver.requests[0])


@pytest.mark.django_db(transaction=True)
def test_delivery_connects_to_the_address_it_checked(api: APIClient, secret: str, http_server, monkeypatch) -> None:
    """DNS rebinding: later answers point elsewhere (127.0.0.2, where nothing listens); the pinned address wins."""
    receiver = http_server(status(200))
    port = receiver.server.server_address[1]
    answers = iter([["127.0.0.1"], ["127.0.0.1"]])
    dns = FakeDNS({"hooks.test": lambda: next(answers, ["127.0.0.2"])})
    monkeypatch.setattr(ssrf, "resolver", dns)
    job = submit_and_deliver(api, f"http://hooks.test:{port}/in")
    assert job.callback_status == CallbackStatus.DELIVERED
    assert dns.questions == ["hooks.test", "hooks.test"]  # submission, then the one delivery
    [request] = receiver.requests
    assert request["headers"]["Host"] == f"hooks.test:{port}"
    verified(secret, request)


@pytest.mark.django_db(transaction=True)
def test_redeliver_and_reconciler_rescue(api: APIClient, secret: str, http_server) -> None:
    receiver = http_server(status(200))
    response = api.post("/api/v1/jobs/async/", {**HASH, "callback_url": receiver.url}, format="json")
    job_id = response.json()["id"]
    hold_host_leases(receiver.url)  # the job worker cannot attempt it inline: it hands attempt 1 to the queue
    run_worker_burst()
    assert queues.get_queue(queues.CALLBACKS_QUEUE).count == 1
    get_redis().flushdb()  # the delivery's RQ job is lost with Redis
    assert Job.objects.get(pk=job_id).callback_status == CallbackStatus.PENDING
    assert webhooks_reconcile() == {"callbacks_interrupted": 0, "callbacks_requeued": 0}  # within the grace period
    later = timezone.now() + timedelta(hours=1)
    assert webhooks_reconcile(now=later) == {"callbacks_interrupted": 0, "callbacks_requeued": 1}
    assert webhooks_reconcile(now=later) == {"callbacks_interrupted": 0, "callbacks_requeued": 0}  # on its way
    drain_callbacks()
    assert Job.objects.get(pk=job_id).callback_status == CallbackStatus.DELIVERED

    assert webhook_delivery_restart(job_id=job_id)
    drain_callbacks()
    job = Job.objects.get(pk=job_id)
    assert job.callback_status == CallbackStatus.DELIVERED
    assert [a["n"] for a in callback_of(api, job)["attempts"]] == [1, 2]
    assert len(receiver.requests) == 2
    assert json.loads(receiver.requests[0]["body"])["id"] == job_id


def drip_headers(stop: threading.Event) -> Callable[[BaseHTTPRequestHandler], None]:
    """A receiver that starts a 200 and then sends one header line every 0.1 s until told to stop."""

    def handler(request: BaseHTTPRequestHandler) -> None:
        try:
            request.wfile.write(b"HTTP/1.1 200 OK\r\n")
            while not stop.wait(0.1):
                request.wfile.write(b"X-Drip: 1\r\n")
                request.wfile.flush()
        except OSError:
            pass
        request.close_connection = True

    return handler


@pytest.mark.django_db(transaction=True)
@override_settings(CALLBACK_TOTAL_TIMEOUT=1.0)
def test_a_receiver_dripping_its_headers_is_cut_off_at_the_total_deadline(
    api: APIClient, secret: str, http_server
) -> None:
    KindSettings.objects.filter(kind="hash").update(callback_retries=0)
    stop = threading.Event()
    receiver = http_server(drip_headers(stop))
    try:
        job = submit_and_deliver(api, receiver.url)
    finally:
        stop.set()
    assert job.callback_status == CallbackStatus.FAILED
    [attempt] = callback_of(api, job)["attempts"]
    assert attempt["status_code"] is None and attempt["error"] == "timeout: no complete answer within 1 s"
    assert attempt["duration_ms"] < 5000  # every read was quick: only the total deadline ends it


def test_the_retry_schedule_is_standard_webhooks_scaled_by_the_kind() -> None:
    expected = [5, 300, 1800, 7200, 18000, 36000, 36000]
    for index, step in enumerate(expected):
        delay = webhook_retry_delay(scale=1.0, retry_index=index)
        assert step <= delay <= step * 1.1
    assert 0.005 <= webhook_retry_delay(scale=0.001, retry_index=0) <= 0.0055
    assert webhook_retry_delay(scale=0.001, retry_index=0, retry_after=7200) == 3600  # CALLBACK_RETRY_AFTER_MAX


@pytest.mark.django_db(transaction=True)
@override_settings(CALLBACK_MAX_AGE=10)
def test_no_retry_starts_past_the_age_cap(api: APIClient, secret: str, http_server) -> None:
    # The schedule at 1/100: 50 ms, 3 s, 18 s... (RQ's scheduler rounds up to whole seconds)
    KindSettings.objects.filter(kind="hash").update(callback_retries=6, callback_backoff=0.01)
    receiver = http_server(status(500))
    job = submit_and_deliver(api, receiver.url)
    assert job.callback_status == CallbackStatus.FAILED
    attempts = callback_of(api, job)["attempts"]
    assert [a["n"] for a in attempts] == [1, 2, 3]  # the 18 s retry would start past the 10 s cap
    assert len(receiver.requests) == 3


@pytest.mark.django_db(transaction=True)
@override_settings(CALLBACK_FREE_BUDGET=1, CALLBACK_FREE_BUDGET_WINDOW=1)
def test_webhooks_of_free_jobs_spend_the_owners_budget(api: APIClient, secret: str, http_server) -> None:
    KindSettings.objects.filter(kind="hash").update(cache_algorithm="lru")
    receiver = http_server(status(200))
    paid = api.post("/api/v1/jobs/async/", {**HASH, "callback_url": receiver.url}, format="json").json()
    run_worker_burst()  # computes (and caches) the result; its webhook is queued
    free = [
        api.post("/api/v1/jobs/async/", {**HASH, "callback_url": receiver.url}, format="json").json() for _ in range(2)
    ]
    assert [job["cached"] for job in free] == [True, True]
    assert Job.objects.get(pk=free[0]["id"]).cost == 0

    run_worker_burst(queues.CALLBACKS_QUEUE)
    ids = {job.id: job.delivery_id for job in Job.objects.all()}
    assert [request["headers"]["webhook-id"] for request in receiver.requests] == [
        str(ids[UUID(paid["id"])]),
        str(ids[UUID(free[0]["id"])]),
    ]  # the paid one needs no budget; the second free one waits for a token
    waiting = Job.objects.get(pk=free[1]["id"])
    assert waiting.callback_status == CallbackStatus.PENDING and not waiting.callback_attempts.exists()

    drain_callbacks()
    assert Job.objects.get(pk=free[1]["id"]).callback_status == CallbackStatus.DELIVERED
    assert len(receiver.requests) == 3


def test_callback_status_follows_a_2xx_attempt_even_if_the_job_row_was_read_first(api: APIClient, http_server) -> None:
    """Issue 21: the detail showed `pending` next to attempt 1 at 200 (two commits, read in between)."""
    hook = f"http://127.0.0.1:{free_port()}/hook"  # never called: the test writes the attempt itself
    response = api.post("/api/v1/jobs/async/", {**HASH, "callback_url": hook}, format="json")
    job = Job.objects.get(pk=response.json()["id"])
    # The rows as a reader could see them when the job row is read before the attempt's commit.
    CallbackAttempt.objects.create(job=job, n=1, status_code=200, retries_left=3)
    callback = callback_of(api, job)
    assert callback["status"] == "delivered" and callback["attempts"][0]["status_code"] == 200


def held_then_ok(held: threading.Event, release: threading.Event) -> Callable[[BaseHTTPRequestHandler], None]:
    """A receiver that holds its first request until released, and answers 200 to every later one."""
    calls = iter(range(10_000))

    def handler(request: BaseHTTPRequestHandler) -> None:
        if next(calls) == 0:
            held.set()
            release.wait(30)
        with contextlib.suppress(OSError):
            respond(request, 200, b"ok")

    return handler


@pytest.mark.django_db(transaction=True)
def test_a_delivery_whose_worker_was_killed_is_closed_interrupted_and_retried(
    api: APIClient, secret: str, http_server, start_worker
) -> None:
    held, release = threading.Event(), threading.Event()
    receiver = http_server(held_then_ok(held, release))
    deadlines = {"CALLBACK_TOTAL_TIMEOUT": "3", "CALLBACK_INTERRUPT_MARGIN": "1"}
    worker = start_worker(queues.JOBS_QUEUE, **deadlines)  # the job's worker makes attempt 1 itself
    response = api.post("/api/v1/jobs/async/", {**HASH, "callback_url": receiver.url}, format="json")
    job = Job.objects.get(pk=response.json()["id"])
    try:
        assert held.wait(30)  # the worker is mid-delivery, the receiver holds the request
        [attempt] = CallbackAttempt.objects.filter(job=job)
        assert attempt.error == "in progress"
        os.kill(worker.pid, signal.SIGKILL)  # the worker only; RQ's scheduler child lives on, as in production
        worker.wait()
    finally:
        release.set()
    start_worker(queues.CALLBACKS_QUEUE, **deadlines)
    with override_settings(CALLBACK_TOTAL_TIMEOUT=3.0, CALLBACK_INTERRUPT_MARGIN=1.0):
        wait_until(lambda: webhooks_reconcile()["callbacks_interrupted"], timeout=30, interval=0.2)
    wait_until(lambda: Job.objects.get(pk=job.pk).callback_status != CallbackStatus.PENDING, timeout=30)

    assert Job.objects.get(pk=job.pk).callback_status == CallbackStatus.DELIVERED
    attempts = callback_of(api, job)["attempts"]
    assert [(a["n"], a["status_code"], a["error"]) for a in attempts] == [(1, None, "interrupted"), (2, 200, "")]
    assert len(receiver.requests) == 2  # the held one and the retry: one webhook-id, receivers drop the copy
    assert {request["headers"]["webhook-id"] for request in receiver.requests} == {str(job.delivery_id)}
    assert CallbackAttempt.objects.filter(job=job, status_code__gte=200, status_code__lt=300).count() == 1
    assert not CallbackAttempt.objects.filter(error="in progress").exists()


@pytest.mark.django_db(transaction=True)
def test_a_slow_receiver_holds_one_worker_and_the_others_deliver(
    api: APIClient, secret: str, http_server, start_worker
) -> None:
    """One slot per host: three deliveries to a stuck receiver hold one callbacks worker, never the job worker
    (its own attempt is cut at CALLBACK_INLINE_TIMEOUT and carried on by a callbacks worker)."""
    release = threading.Event()

    def stuck(request: BaseHTTPRequestHandler) -> None:
        release.wait(30)
        with contextlib.suppress(OSError):
            respond(request, 200, b"ok")

    slow, fast = http_server(stuck), http_server(status(200))
    limits = {
        "CALLBACK_MAX_PER_HOST": "1",
        "CALLBACK_HOST_BUSY_DELAY": "0.2",
        "CALLBACK_TOTAL_TIMEOUT": "30",
        "CALLBACK_INLINE_TIMEOUT": "0.3",
    }
    for _ in range(2):
        start_worker(queues.CALLBACKS_QUEUE, **limits)
    start_worker(queues.JOBS_QUEUE, **limits)
    slow_ids = [
        api.post("/api/v1/jobs/async/", {**HASH, "callback_url": slow.url}, format="json").json()["id"]
        for _ in range(3)
    ]
    in_progress = CallbackAttempt.objects.filter(job_id__in=slow_ids, error="in progress")
    try:
        wait_until(lambda: Job.objects.filter(pk__in=slow_ids, status="succeeded").count() == 3, timeout=30)
        fast_id = api.post("/api/v1/jobs/async/", {**HASH, "callback_url": fast.url}, format="json").json()["id"]
        wait_until(lambda: Job.objects.get(pk=fast_id).callback_status == CallbackStatus.DELIVERED, timeout=30)
        assert [(a.n, a.status_code) for a in CallbackAttempt.objects.filter(job_id=fast_id)] == [(1, 200)]
        wait_until(lambda: in_progress.count() == 1, timeout=30)  # the job worker's cut attempts are closed
        cut = CallbackAttempt.objects.filter(job_id__in=slow_ids, error__startswith="timeout: cut")
        assert in_progress.count() == 1 and all(a.n == 1 for a in cut)
    finally:
        release.set()
    delivered = Job.objects.filter(pk__in=slow_ids, callback_status=CallbackStatus.DELIVERED)
    wait_until(lambda: delivered.count() == 3, timeout=30)
    for job_id in slow_ids:  # a cut attempt spends no retry: the one after it keeps the whole budget
        attempts = list(CallbackAttempt.objects.filter(job_id=job_id).order_by("n"))
        assert attempts[-1].status_code == 200
        assert {a.retries_left for a in attempts} == {3}


def _lock_waiters() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks: SQLite serialises every writer anyway")
def test_a_2xx_attempt_and_the_delivered_status_commit_together(
    api: APIClient, secret: str, http_server, start_worker
) -> None:
    """Issue 21 (write side): while the job row is locked, the worker's 200 must not show on the attempt alone."""
    locked, unlock = threading.Event(), threading.Event()
    job_id: dict[str, str] = {}

    def hold_job_row() -> None:
        with transaction.atomic():
            Job.objects.select_for_update().get(pk=job_id["id"])
            locked.set()
            unlock.wait(30)
        connections["default"].close()

    def answer_with_the_row_locked(request: BaseHTTPRequestHandler) -> None:
        threading.Thread(target=hold_job_row, daemon=True).start()
        locked.wait(30)
        respond(request, 200, b"ok")

    receiver = http_server(answer_with_the_row_locked)
    start_worker(queues.JOBS_QUEUE)  # the job's worker makes the attempt, in a process of its own
    job_id["id"] = api.post("/api/v1/jobs/async/", {**HASH, "callback_url": receiver.url}, format="json").json()["id"]
    try:
        wait_until(lambda: locked.is_set() and _lock_waiters() > 0, timeout=30)  # the worker waits on the job row
        [attempt] = CallbackAttempt.objects.filter(job_id=job_id["id"])
        assert (attempt.status_code, attempt.error) == (None, "in progress")
    finally:
        unlock.set()
    wait_until(lambda: Job.objects.get(pk=job_id["id"]).callback_status == CallbackStatus.DELIVERED, timeout=30)
    [attempt] = CallbackAttempt.objects.filter(job_id=job_id["id"])
    assert attempt.status_code == 200

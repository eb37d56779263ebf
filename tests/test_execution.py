"""A worker's claim-run-finish in few statements, and the first webhook attempt made by that worker."""

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient
from standardwebhooks.webhooks import Webhook

from accounts.models import User
from bench.overhead import redis_round_trips
from jobs import queues
from jobs.encryption import open_result, seal_input
from jobs.execution import job_execute
from jobs.kind_settings import get_kind_settings
from jobs.models import ATTEMPT_IN_PROGRESS, CallbackAttempt, CallbackStatus, Job, JobMode, JobStatus, KindSettings
from jobs.webhooks import (
    _attempt_close,
    _host_key,
    _Outcome,
    webhook_deliver_first,
    webhook_signing_secrets,
    webhooks_reconcile,
)
from jobsite.redis import get_redis
from tests.conftest import LocalHTTPServer, respond
from tests.waiting import wait_until
from tests.webhook_helpers import drain_callbacks, hold_host_leases

pytestmark = pytest.mark.django_db(transaction=True)

HASH_INPUT = {"data": "claim-run-finish", "iterations": 1000}

CLAIM_RUN_FINISH_BUDGET = 5
"""Statements of a worker's claim-run-finish of a hash job: the claim (UPDATE ... RETURNING), then BEGIN,
the finish UPDATE, the concurrency slot's release (UPDATE) and COMMIT (Django logs the transaction's ends as
statements). Nothing reads the row back; a refund (failed jobs) or a webhook adds its own."""


def queued_job(user: User, **fields: object) -> Job:
    """A job as submission records it, without the RQ hop (the test calls the worker entry itself)."""
    created = timezone.now() - timedelta(milliseconds=50)
    return Job.objects.create(
        owner=user,
        endpoint="jobs.async",
        kind="hash",
        mode=JobMode.ASYNC,
        cost=1,
        created_at=created,
        input=seal_input(get_kind_settings("hash"), HASH_INPUT),
        **fields,
    )


def test_claim_run_finish_of_a_hash_job_stays_in_its_statement_budget(
    user: User, django_assert_max_num_queries
) -> None:
    job = queued_job(user)
    get_kind_settings("hash")  # per-process cache, read once per process and kept until a version bump
    with django_assert_max_num_queries(CLAIM_RUN_FINISH_BUDGET) as captured:
        assert job_execute(job_id=job.pk, worker_name="w1") is None
    statements = [query["sql"].split()[0].upper() for query in captured.captured_queries]
    assert statements.count("SELECT") == 0, captured.captured_queries
    job.refresh_from_db()
    assert (job.status, job.attempts, job.worker_name) == (JobStatus.SUCCEEDED, 1, "w1")
    assert open_result(job.result)["iterations"] == 1000  # sealed if the kind's settings say so
    assert job.queue_wait_ms >= 50 and job.run_ms is not None  # written by the finish UPDATE
    assert job.started_at <= job.finished_at


CLAIM_RUN_FINISH_REDIS = ["pipeline[XADD EXPIRE EXISTS]", "pipeline[XADD EXPIRE XADD EXPIRE]", "EVALSHA"]
"""Redis round trips of the same run, besides RQ's own: the `running` event with the run's first read of its stop
flag, the final event (on the job's stream and its final stream), the result cache's store (one script)."""


def test_claim_run_finish_of_a_hash_job_makes_its_redis_round_trips(user: User) -> None:
    job = queued_job(user)
    get_kind_settings("hash")
    with redis_round_trips() as trips:
        assert job_execute(job_id=job.pk, worker_name="w1") is None
    assert trips == CLAIM_RUN_FINISH_REDIS
    assert Job.objects.get(pk=job.pk).status == JobStatus.SUCCEEDED


def test_a_claimed_job_is_not_claimed_again(user: User) -> None:
    job = queued_job(user)
    job_execute(job_id=job.pk, worker_name="w1")
    with CaptureQueriesContext(connection) as captured:
        assert job_execute(job_id=job.pk, worker_name="w2") is None
    assert len(captured.captured_queries) == 1  # the conditional claim matched no row: nothing else ran
    assert Job.objects.get(pk=job.pk).worker_name == "w1"


@pytest.fixture
def webhooks_to_loopback() -> Iterator[dict[str, str]]:
    """Deliveries may reach the receivers of this test; retries come fast. Returns the workers' environment."""
    KindSettings.objects.update_or_create(kind="hash", defaults={"callback_retries": 3, "callback_backoff": 0.001})
    with override_settings(CALLBACK_ALLOW_PRIVATE=True):
        yield {"CALLBACK_ALLOW_PRIVATE": "true"}


def submit(api: APIClient, url: str) -> UUID:
    body = {"kind": "hash", "input": {"data": "inline", "iterations": 10}, "callback_url": url}
    response = api.post("/api/v1/jobs/async/", body, format="json")
    assert response.status_code == 202, response.content
    return UUID(response.json()["id"])


def attempts_of(job_id: UUID) -> list[tuple[int, int | None, str]]:
    return list(CallbackAttempt.objects.filter(job_id=job_id).order_by("n").values_list("n", "status_code", "error"))


def test_the_job_worker_makes_the_first_attempt_itself(
    api: APIClient,
    webhooks_to_loopback: dict[str, str],
    http_server: Callable[..., LocalHTTPServer],
    start_worker: Callable[..., object],
) -> None:
    receiver = http_server(lambda request: respond(request, 200, b"ok"))
    start_worker(queues.JOBS_QUEUE, **webhooks_to_loopback)  # no callbacks worker at all
    job_id = submit(api, receiver.url)
    wait_until(lambda: Job.objects.get(pk=job_id).callback_status != CallbackStatus.PENDING, timeout=30)
    job = Job.objects.get(pk=job_id)
    assert job.callback_status == CallbackStatus.DELIVERED
    assert attempts_of(job_id) == [(1, 200, "")]
    assert len(receiver.requests) == 1 and receiver.requests[0]["headers"]["webhook-id"] == str(job.delivery_id)
    assert queues.get_queue(queues.CALLBACKS_QUEUE).count == 0  # no second RQ hop was made


FIRST_ATTEMPT_BUDGET = 2 if connection.vendor == "postgresql" else 5
"""Statements of a worker's first webhook attempt: its row claimed (INSERT ... ON CONFLICT DO NOTHING), then closed
with the job's delivery status (PostgreSQL: one statement; SQLite: BEGIN, UPDATE attempt, UPDATE job, COMMIT). Its
body and signature read nothing: the owner's signing secrets are cached per process, the owner's id is on the job,
attempt 1 lists no attempts."""


def test_the_first_attempt_reads_no_row_to_build_and_sign_its_webhook(
    api: APIClient,
    user: User,
    webhooks_to_loopback: dict[str, str],
    http_server: Callable[..., LocalHTTPServer],
    django_assert_max_num_queries: Callable[..., Any],
) -> None:
    receiver = http_server(lambda request: respond(request, 200, b"ok"))
    secret = api.post("/api/v1/me/webhook-secret/").json()["secret"]
    job_id = submit(api, receiver.url)
    assert webhook_signing_secrets(user_id=user.pk) == [secret]  # per-process caches, as a worker's after its first
    get_kind_settings("hash")
    with django_assert_max_num_queries(CLAIM_RUN_FINISH_BUDGET + FIRST_ATTEMPT_BUDGET) as captured:
        assert job_execute(job_id=job_id, worker_name="w1", deliver_first=webhook_deliver_first) is None
    statements = [query["sql"].split()[0].upper() for query in captured.captured_queries]
    assert statements.count("SELECT") == 0, captured.captured_queries
    assert attempts_of(job_id) == [(1, 200, "")]
    delivered = Webhook(secret).verify(receiver.requests[0]["body"], receiver.requests[0]["headers"])
    assert delivered["id"] == str(job_id) and delivered["callback"]["attempts"] == []


def test_a_failed_first_attempt_is_retried_from_the_callbacks_queue(
    api: APIClient,
    webhooks_to_loopback: dict[str, str],
    http_server: Callable[..., LocalHTTPServer],
    start_worker: Callable[..., object],
) -> None:
    answers = iter([500])
    receiver = http_server(lambda request: respond(request, next(answers, 200), b"."))
    start_worker(queues.JOBS_QUEUE, **webhooks_to_loopback)
    job_id = submit(api, receiver.url)
    wait_until(lambda: attempts_of(job_id) == [(1, 500, "HTTP 500: .")], timeout=30)
    assert Job.objects.get(pk=job_id).callback_status == CallbackStatus.PENDING  # never ahead of its attempts
    start_worker(queues.CALLBACKS_QUEUE, **webhooks_to_loopback)
    wait_until(lambda: Job.objects.get(pk=job_id).callback_status == CallbackStatus.DELIVERED, timeout=30)
    assert attempts_of(job_id) == [(1, 500, "HTTP 500: ."), (2, 200, "")]


def test_a_busy_host_hands_the_first_attempt_to_the_callbacks_queue(
    api: APIClient,
    webhooks_to_loopback: dict[str, str],
    http_server: Callable[..., LocalHTTPServer],
    start_worker: Callable[..., object],
) -> None:
    receiver = http_server(lambda request: respond(request, 200, b"ok"))
    hold_host_leases(receiver.url)
    start_worker(queues.JOBS_QUEUE, **webhooks_to_loopback)
    job_id = submit(api, receiver.url)
    callbacks = queues.get_queue(queues.CALLBACKS_QUEUE)
    wait_until(lambda: queues.webhook_rq_id(job_id, 1) in callbacks.job_ids, timeout=30)
    assert attempts_of(job_id) == [] and receiver.requests == []
    get_redis().delete(_host_key(receiver.url))  # the leases end
    drain_callbacks()
    assert attempts_of(job_id) == [(1, 200, "")]
    assert Job.objects.get(pk=job_id).callback_status == CallbackStatus.DELIVERED


def test_a_worker_lost_between_commit_and_delivery_leaves_it_to_the_reconciler(
    api: APIClient, webhooks_to_loopback: dict[str, str], http_server: Callable[..., LocalHTTPServer], settings
) -> None:
    receiver = http_server(lambda request: respond(request, 200, b"ok"))
    job_id = submit(api, receiver.url)
    queues.get_queue(queues.JOBS_QUEUE).empty()
    # The worker commits the final state and is gone before its inline attempt: nothing was sent, nothing queued.
    job_execute(job_id=job_id, worker_name="doomed", deliver_first=lambda job: None)
    assert Job.objects.get(pk=job_id).callback_status == CallbackStatus.PENDING
    assert queues.get_queue(queues.CALLBACKS_QUEUE).count == 0
    assert webhooks_reconcile()["callbacks_requeued"] == 0  # within the grace
    later = timezone.now() + timedelta(seconds=settings.CALLBACK_RECONCILE_GRACE + 1)
    assert webhooks_reconcile(now=later)["callbacks_requeued"] == 1
    drain_callbacks()
    assert attempts_of(job_id) == [(1, 200, "")] and len(receiver.requests) == 1


def test_an_outcome_after_its_attempt_was_closed_is_dropped_and_settles_nothing(user: User) -> None:
    """The reconciler closed attempt 1 (`interrupted`) and scheduled attempt 2: attempt 1's late answer must change
    neither its row nor the job's delivery status (PostgreSQL: the status UPDATE rides in the attempt's statement)."""
    job = queued_job(
        user, status=JobStatus.SUCCEEDED, callback_url="http://127.0.0.1:9/h", callback_status=CallbackStatus.PENDING
    )
    give_up = timezone.now() + timedelta(hours=1)
    late = CallbackAttempt.objects.create(job=job, n=1, error="interrupted", retries_left=1, give_up_at=give_up)
    assert _attempt_close(late, outcome=_Outcome(status_code=200), duration_ms=5) == "late"
    assert Job.objects.get(pk=job.pk).callback_status == CallbackStatus.PENDING
    assert CallbackAttempt.objects.values_list("status_code", "error").get(pk=late.pk) == (None, "interrupted")

    second = CallbackAttempt.objects.create(job=job, n=2, error=ATTEMPT_IN_PROGRESS, retries_left=0, give_up_at=give_up)
    assert _attempt_close(second, outcome=_Outcome(status_code=200), duration_ms=5) == "delivered"
    assert Job.objects.get(pk=job.pk).callback_status == CallbackStatus.DELIVERED
    assert CallbackAttempt.objects.values_list("status_code", "error").get(pk=second.pk) == (200, "")

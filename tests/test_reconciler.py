"""Nothing accepted is lost: a SIGKILLed worker and a flushed Redis still end in a final state."""

import os
import signal
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler

import pytest
from django.test import override_settings
from rest_framework.test import APIClient
from rq.suspension import resume, suspend

from jobs import queues
from jobs.models import Job, JobStatus, KindSettings
from jobs.services import jobs_reconcile
from jobsite.redis import get_redis
from tests.conftest import LocalHTTPServer, respond, run_worker_burst
from tests.waiting import wait_until

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


@pytest.fixture
def slow_target(http_server: Callable[..., LocalHTTPServer]) -> Iterator[LocalHTTPServer]:
    """A fetch target that hangs long enough for a test to kill the worker mid-job."""

    def handler(request: BaseHTTPRequestHandler) -> None:
        time.sleep(30)
        respond(request, 200, b"late")

    yield http_server(handler)


@pytest.mark.django_db(transaction=True)
@override_settings(RECONCILE_RUNNING_GRACE=1, RECONCILE_QUEUED_GRACE=0, CALLBACK_ALLOW_PRIVATE=True)
def test_sigkilled_worker_job_is_requeued_then_completed(api: APIClient, start_worker, slow_target) -> None:
    KindSettings.objects.update_or_create(kind="fetch", defaults={"time_limit": 2, "retries": 0})
    job_id = api.post(
        "/api/v1/jobs/async/", {"kind": "fetch", "input": {"url": slow_target.url}}, format="json"
    ).json()["id"]
    worker = start_worker()
    wait_until(lambda: Job.objects.get(pk=job_id).status == JobStatus.RUNNING, timeout=30)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    assert Job.objects.get(pk=job_id).status == JobStatus.RUNNING  # RQ alone would leave it so for minutes
    assert jobs_reconcile() == {"requeued": 0, "failed": 0, "canceled": 0}  # within time_limit + grace: left alone

    wait_until(lambda: jobs_reconcile() == {"requeued": 1, "failed": 0, "canceled": 0}, timeout=10, interval=0.1)
    job = Job.objects.get(pk=job_id)
    assert job.status == JobStatus.QUEUED and job.attempts == 1
    [lost] = job.attempt_log  # the lost attempt is on record: which worker, from when until when
    assert (lost["n"], lost["code"], lost["callers_fault"]) == (1, "worker_lost", False)
    assert lost["worker"] and lost["worker"] == job.worker_name
    assert lost["started_at"] < lost["at"]

    # The target answers at once now: the second attempt succeeds.
    slow_target.handler = lambda request: respond(request, 200, b"ok")
    run_worker_burst()
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert job.attempts == 2
    assert job.result["bytes"] == 2
    # Only the last wait counts: from the requeue, not from created_at (which includes the lost attempt's 3 s).
    assert job.queue_wait_ms == int((job.started_at - job.queued_at).total_seconds() * 1000)
    assert job.queue_wait_ms < (job.started_at - job.created_at).total_seconds() * 1000 - 3000


@override_settings(RECONCILE_RUNNING_GRACE=0, JOB_MAX_ATTEMPTS=1)
def test_job_past_its_attempts_fails_with_worker_lost(api: APIClient) -> None:
    job_id = api.post("/api/v1/jobs/async/", {"kind": "hash", "input": {"data": "x"}}, format="json").json()["id"]
    KindSettings.objects.update_or_create(kind="hash", defaults={"time_limit": 1})
    Job.objects.filter(pk=job_id).update(
        status=JobStatus.RUNNING, attempts=1, started_at=Job.objects.get(pk=job_id).created_at
    )
    wait_until(lambda: jobs_reconcile() == {"requeued": 0, "failed": 1, "canceled": 0}, timeout=5, interval=0.1)
    job = Job.objects.get(pk=job_id)
    assert job.status == JobStatus.FAILED and job.error_code == "worker_lost"


@pytest.mark.django_db(transaction=True)
@override_settings(RECONCILE_QUEUED_GRACE=0)
def test_redis_flushed_after_acceptance_loses_nothing(api: APIClient) -> None:
    redis = get_redis()
    suspend(redis)  # no worker may take the jobs before the flush
    ids = [
        api.post("/api/v1/jobs/async/", {"kind": "hash", "input": {"data": f"d{i}"}}, format="json").json()["id"]
        for i in range(3)
    ]
    assert queues.queue_depth() == 3
    redis.flushdb()  # FLUSHDB, not FLUSHALL: other Redis databases on this server are not ours
    resume(redis)
    assert queues.queue_depth() == 0
    assert jobs_reconcile() == {"requeued": 3, "failed": 0, "canceled": 0}
    assert jobs_reconcile() == {"requeued": 0, "failed": 0, "canceled": 0}  # idempotent: pending jobs are left alone
    run_worker_burst()
    assert set(Job.objects.filter(pk__in=ids).values_list("status", flat=True)) == {JobStatus.SUCCEEDED}


@pytest.mark.django_db(transaction=True)
@override_settings(RECONCILE_QUEUED_GRACE=0)
@pytest.mark.parametrize("rq_status", ["queued", "started"])
def test_a_job_lost_in_flight_is_requeued(api: APIClient, rq_status: str) -> None:
    """A worker's pop (or its start) whose reply a broken connection dropped: RQ's job still says queued (started)
    but no list or registry holds it, so no worker ever would take it (tests/test_faults.py's redis-down round)."""
    redis = get_redis()
    suspend(redis)
    job_id = api.post("/api/v1/jobs/async/", {"kind": "hash", "input": {"data": "lost"}}, format="json").json()["id"]
    assert jobs_reconcile()["requeued"] == 0  # staged: pending
    held_in = [key for key in redis.scan_iter() if redis.type(key) == b"list" and redis.lrem(key, 0, job_id)]
    assert held_in  # it was held somewhere, and is nowhere now
    redis.hset(f"rq:job:{job_id}", "status", rq_status)
    assert jobs_reconcile() == {"requeued": 1, "failed": 0, "canceled": 0}
    assert jobs_reconcile()["requeued"] == 0  # held again
    resume(redis)
    run_worker_burst()
    assert Job.objects.get(pk=job_id).status == JobStatus.SUCCEEDED


def test_reconciler_is_registered_with_rq_cron() -> None:
    from rq import cron

    import jobs.cron  # noqa: F401 - registers on import

    assert any(entry["func"].__name__ == "reconcile" for entry in cron._job_data_registry)

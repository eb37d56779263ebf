"""Cancel while running: a running async job is asked to stop (canceling), its worker stops it at its next
check (canceled), a cancel racing the finish leaves one final state and one refund at most, and a canceling
job whose worker died is finished by the reconciler."""

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from accounts.models import User
from credits.models import EntryType, LedgerEntry
from credits.selectors import credit_balance
from jobs.execution import job_claim, job_finish, job_run
from jobs.models import ConcurrencySlot, Job, JobMode, JobStatus
from jobs.services import jobs_reconcile
from jobs.stop import StopSignal, stop_key
from jobsite.redis import get_redis
from tests.conftest import LocalHTTPServer, auth_headers, gunicorn_server, respond
from tests.job_helpers import assert_ledger_explains_balance, kind_settings
from tests.waiting import wait_until

LONG = 200_000_000
"""Iterations of a hash job that runs for minutes: only a cancel (or its time limit) ends it in a test."""

HASH = {"kind": "hash", "input": {"data": "x", "iterations": 1000}}


@pytest.fixture(scope="module")
def long_server(django_db_setup: None, django_db_blocker: Any) -> Iterator[str]:
    """gunicorn that accepts hash jobs long enough to be canceled mid-run."""
    with gunicorn_server("cancel-gunicorn", HASH_MAX_ITERATIONS=str(LONG)) as url:
        yield url


def refunds_of(job_id: str) -> int:
    return LedgerEntry.objects.filter(job_id=job_id, type=EntryType.REFUND).count()


def slots_in_use(user: User) -> int:
    return sum(ConcurrencySlot.objects.filter(owner=user).values_list("in_use", flat=True))


def job_status(job_id: str) -> str:
    return Job.objects.values_list("status", flat=True).get(pk=job_id)


# --- over HTTP, against gunicorn and real workers ------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_cancel_a_running_hash_job_stops_it_refunds_nothing_and_frees_the_worker(
    long_server: str, user: User, start_worker: Callable[..., Any], http_server: Callable[..., LocalHTTPServer]
) -> None:
    kind_settings("hash", time_limit=300)
    receiver = http_server(lambda request: respond(request, 204))
    with httpx.Client(base_url=long_server, headers=auth_headers(user), timeout=30) as http:
        assert http.post("/api/v1/me/webhook-secret/").status_code == 201
        before = credit_balance(user=user)
        body = {"kind": "hash", "input": {"data": "x", "iterations": LONG}, "callback_url": receiver.url}
        job_id = http.post("/api/v1/jobs/async/", json=body).json()["id"]
        start_worker()
        wait_until(lambda: job_status(job_id) == JobStatus.RUNNING, timeout=30)

        asked = http.post(f"/api/v1/jobs/{job_id}/cancel/")
        assert asked.status_code == 202, asked.text
        assert asked.json()["status"] == "canceling" and asked.json()["finished_at"] is None
        again = http.post(f"/api/v1/jobs/{job_id}/cancel/")  # harmless: the flag again, or 409 once it stopped
        assert (again.status_code, again.json().get("status")) == (202, "canceling") or again.status_code == 409

        final = wait_until(lambda: (job := http.get(f"/api/v1/jobs/{job_id}/").json())["status"] == "canceled" and job)
        assert final["result"] is None and final["error"] is None and final["expires_at"]
        assert final["run_ms"] < 60_000  # stopped mid-run: the whole run would take minutes
        assert http.post(f"/api/v1/jobs/{job_id}/cancel/").status_code == 409  # final now

        # The rule: once it ran, a cancel refunds nothing; the slot is free again.
        assert credit_balance(user=user) == before - 1 and refunds_of(job_id) == 0
        assert_ledger_explains_balance(user)
        assert slots_in_use(user) == 0

        # The final webhook says canceled, as for a queued cancel.
        wait_until(lambda: receiver.requests)
        assert json.loads(receiver.requests[0]["body"])["status"] == "canceled"

        # The worker is free again: the next job runs at once.
        quick = http.post("/api/v1/jobs/async/", json=HASH).json()["id"]
        wait_until(lambda: job_status(quick) == JobStatus.SUCCEEDED, timeout=15)


@pytest.mark.django_db(transaction=True)
def test_cancel_a_fetch_between_chunks_of_a_slow_body(
    long_server: str, user: User, start_worker: Callable[..., Any], http_server: Callable[..., LocalHTTPServer]
) -> None:
    kind_settings("fetch", time_limit=300, retries=0)
    sent = threading.Event()

    def drip(request: BaseHTTPRequestHandler) -> None:
        request.send_response(200)
        request.send_header("Content-Length", str(1000 * 1024))
        request.end_headers()
        for _ in range(1000):  # 1 KiB every 0.1 s: 100 s in all
            request.wfile.write(b"x" * 1024)
            request.wfile.flush()
            sent.set()
            time.sleep(0.1)

    target = http_server(drip)
    with httpx.Client(base_url=long_server, headers=auth_headers(user), timeout=30) as http:
        job_id = http.post("/api/v1/jobs/async/", json={"kind": "fetch", "input": {"url": target.url}}).json()["id"]
        start_worker()
        wait_until(sent.is_set, timeout=30)
        assert http.post(f"/api/v1/jobs/{job_id}/cancel/").status_code == 202
        wait_until(lambda: job_status(job_id) == JobStatus.CANCELED, timeout=15)
    assert refunds_of(job_id) == 0 and slots_in_use(user) == 0


@pytest.mark.django_db(transaction=True)
def test_cancel_racing_claim_and_finish_leaves_one_final_state_and_one_refund_at_most(
    long_server: str, user: User, start_worker: Callable[..., Any]
) -> None:
    with httpx.Client(base_url=long_server, headers=auth_headers(user), timeout=30) as http:
        body = {"kind": "hash", "input": {"data": "race", "iterations": 200_000}}  # a fraction of a second each
        ids = [http.post("/api/v1/jobs/async/", json=body).json()["id"] for _ in range(12)]
        start_worker()
        answers = {}
        for n, job_id in enumerate(ids):  # some queued still, some running, some done when the cancel comes
            time.sleep(0.03 * n)
            answers[job_id] = http.post(f"/api/v1/jobs/{job_id}/cancel/")
        wait_until(lambda: all(Job.objects.get(pk=job_id).is_final for job_id in ids), timeout=60)

    for job_id, answer in answers.items():
        job = Job.objects.get(pk=job_id)
        assert answer.status_code in (200, 202, 409), answer.text
        if answer.status_code == 200:  # canceled while queued: refunded in full, never ran
            assert job.status == JobStatus.CANCELED and job.started_at is None and refunds_of(job_id) == 1
        elif answer.status_code == 202:  # asked while running: stopped (no refund), or its result made it
            assert job.status in (JobStatus.CANCELED, JobStatus.SUCCEEDED) and refunds_of(job_id) == 0
            assert job.started_at is not None
        else:  # already final
            assert answer.json()["code"] == "not_cancellable"
            assert job.status == JobStatus.SUCCEEDED and refunds_of(job_id) == 0
    assert {answer.status_code for answer in answers.values()} - {409}  # some cancels came in time
    assert_ledger_explains_balance(user)
    assert slots_in_use(user) == 0


@pytest.mark.django_db(transaction=True)
@override_settings(RECONCILE_RUNNING_GRACE=0)
def test_reconciler_finishes_a_canceling_job_whose_worker_died(
    long_server: str, user: User, start_worker: Callable[..., Any]
) -> None:
    kind_settings("hash", time_limit=4)
    with httpx.Client(base_url=long_server, headers=auth_headers(user), timeout=30) as http:
        before = credit_balance(user=user)
        body = {"kind": "hash", "input": {"data": "x", "iterations": LONG}}
        job_id = http.post("/api/v1/jobs/async/", json=body).json()["id"]
        worker = start_worker()
        wait_until(lambda: job_status(job_id) == JobStatus.RUNNING, timeout=30)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        assert http.post(f"/api/v1/jobs/{job_id}/cancel/").json()["status"] == "canceling"  # nobody sees the flag

        assert jobs_reconcile()["canceled"] == 0  # within its time limit: its worker may still stop it
        wait_until(lambda: jobs_reconcile()["canceled"] == 1, timeout=15, interval=0.2)
        job = http.get(f"/api/v1/jobs/{job_id}/").json()
    assert job["status"] == "canceled" and job["expires_at"]
    [lost] = job["attempt_log"]
    assert lost["code"] == "worker_lost" and lost["worker"]
    assert credit_balance(user=user) == before - 1 and refunds_of(job_id) == 0
    assert slots_in_use(user) == 0
    assert_ledger_explains_balance(user)


# --- the interleavings, one at a time ------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_result_that_made_it_stands_after_a_cancel_request(api: APIClient, user: User) -> None:
    job_id = api.post("/api/v1/jobs/async/", HASH, format="json").json()["id"]
    job = job_claim(job_id)
    assert api.post(f"/api/v1/jobs/{job_id}/cancel/").status_code == 202
    assert job_finish(job, status=JobStatus.SUCCEEDED, result={"output_hash": "h"})  # too late to stop it
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.result == {"output_hash": "h"} and job.expires_at
    assert refunds_of(job_id) == 0 and slots_in_use(user) == 0


@pytest.mark.django_db
def test_a_failure_after_a_cancel_request_ends_canceled_with_the_failure_logged(api: APIClient, user: User) -> None:
    job_id = api.post("/api/v1/jobs/async/", HASH, format="json").json()["id"]
    job = job_claim(job_id)
    api.post(f"/api/v1/jobs/{job_id}/cancel/")
    assert job_finish(job, status=JobStatus.FAILED, error_code="time_limit", error_message="ran over 1 s")
    assert not job_finish(job, status=JobStatus.FAILED, error_code="time_limit")  # one final state: no second
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELED and job.error_code == "" and job.attempt_log[-1]["code"] == "time_limit"
    assert refunds_of(job_id) == 0  # the cancel's rule, not the failure's (time_limit would be refunded)


@pytest.mark.django_db
def test_a_job_finished_first_cannot_be_canceled(api: APIClient) -> None:
    job_id = api.post("/api/v1/jobs/async/", HASH, format="json").json()["id"]
    job_finish(job_claim(job_id), status=JobStatus.SUCCEEDED, result={})
    refused = api.post(f"/api/v1/jobs/{job_id}/cancel/")
    assert refused.status_code == 409 and refused.json()["code"] == "not_cancellable"
    assert "succeeded" in refused.json()["detail"]
    assert job_status(job_id) == JobStatus.SUCCEEDED


@pytest.mark.django_db
def test_the_run_stops_at_its_next_check_once_the_flag_is_up(
    api: APIClient, user: User, django_capture_on_commit_callbacks: Any
) -> None:
    job_id = api.post("/api/v1/jobs/async/", {"kind": "hash", "input": {"data": "x"}}, format="json").json()["id"]
    job = job_claim(job_id)
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post(f"/api/v1/jobs/{job_id}/cancel/").status_code == 202
    assert get_redis().ttl(stop_key(job_id)) > 60  # outlives the time limit and the reconciler's grace
    assert job_run(job) is None
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELED and job.result is None and job.run_ms is not None
    assert refunds_of(job_id) == 0 and slots_in_use(user) == 0


@pytest.mark.django_db
def test_the_stop_signal_reads_redis_at_most_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    reads = []
    redis = get_redis()
    original = redis.exists
    monkeypatch.setattr(redis, "exists", lambda *keys: reads.append(keys) or original(*keys))
    signal_ = StopSignal("00000000-0000-0000-0000-000000000001")
    assert not any(signal_() for _ in range(10_000))  # a hash run's checks in a fraction of a second
    assert len(reads) <= 2
    redis.set(stop_key("00000000-0000-0000-0000-000000000001"), 1)
    assert wait_until(signal_, timeout=2, interval=0.01)


@pytest.mark.django_db
def test_a_sync_job_cannot_be_canceled(api: APIClient, user: User) -> None:
    job = Job.objects.create(
        owner=user, endpoint="jobs.sync", kind="hash", mode=JobMode.SYNC, status=JobStatus.RUNNING, attempts=1
    )
    refused = api.post(f"/api/v1/jobs/{job.pk}/cancel/")
    assert refused.status_code == 409 and "sync job" in refused.json()["detail"]
    assert job_status(str(job.pk)) == JobStatus.RUNNING


@pytest.mark.django_db
def test_compat_read_shows_a_canceling_job_as_processing(user: User, client_for: Callable[[User], APIClient]) -> None:
    job = Job.objects.create(
        owner=user, endpoint="jobs.async", kind="hash", mode=JobMode.ASYNC, status=JobStatus.CANCELING, attempts=1
    )
    assert client_for(user).get(f"/requests/{job.pk}").json()["status"] == "processing"

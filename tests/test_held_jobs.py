"""Held jobs (issues 19, 20): `run_at` schedules an async job, `depends_on` makes it wait for others.

Through HTTP against gunicorn with real RQ workers where the behaviour crosses processes (RQ's scheduler, the
release at run_at, a dependency finishing in a worker); in-process where a step must be taken by hand (a lost
release, a full cap at the moment of release, a dependency finishing while a dependent is submitted).
"""

import json
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from django.db import transaction
from django.test import override_settings
from rest_framework.test import APIClient

from accounts.models import User
from credits.models import LedgerEntry
from credits.selectors import credit_balance
from credits.services import refund_key
from jobs import queues
from jobs.dependencies import DEPENDS_ON_MAX, job_dependencies_add
from jobs.execution import job_claim, job_finish, job_held_settle
from jobs.holding import Settled
from jobs.models import ConcurrencySlot, Job, JobDependency, JobStatus
from jobs.services import held_jobs_reconcile
from jobs.tasks import reconcile
from jobsite.errors import InvalidInput
from jobsite.redis import get_redis
from tests.access_helpers import set_policy
from tests.conftest import ROOT, LocalHTTPServer, auth_headers, run_worker_burst
from tests.job_helpers import assert_ledger_explains_balance
from tests.traffic_http import fire_concurrently
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)  # on_commit enqueues must run

HASH = {"kind": "hash", "input": {"data": "held", "iterations": 10}}


def _in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def _problem_fields(response: Any) -> list[str]:
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == "validation_error"
    return [error["field"] for error in body["errors"]]


class Api:
    """The API of one user over real HTTP (gunicorn)."""

    def __init__(self, server_url: str, user: User):
        self.client = httpx.Client(base_url=server_url, headers=auth_headers(user), timeout=30)

    def submit(self, **body: Any) -> dict[str, Any]:
        response = self.client.post("/api/v1/jobs/async/", json={**HASH, **body})
        assert response.status_code == 202, response.text
        return response.json()

    def job(self, job_id: str) -> dict[str, Any]:
        return self.client.get(f"/api/v1/jobs/{job_id}/").json()

    def final(self, job_id: str, *, timeout: float = 20) -> dict[str, Any]:
        return wait_until(
            lambda: (job := self.job(job_id))["status"] in ("succeeded", "failed", "canceled") and job, timeout=timeout
        )


@pytest.fixture
def http_api(server_url: str, user: User) -> Iterator[Api]:
    api = Api(server_url, user)
    yield api
    api.client.close()


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)


# --- Scheduling ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_scheduled_job_runs_at_run_at_and_not_before(http_api: Api, user: User, start_worker) -> None:
    start_worker()
    before = credit_balance(user=user)
    job = http_api.submit(run_at=_in(3))
    assert job["status"] == "scheduled" and job["run_at"]
    assert credit_balance(user=user) == before - job["cost"]  # charged at submission
    run_at = _at(job["run_at"])
    wait_until(lambda: datetime.now(UTC) > run_at - timedelta(seconds=1))
    assert http_api.job(job["id"])["status"] == "scheduled"  # a second before run_at, a worker idle: still held

    done = http_api.final(job["id"])
    assert done["status"] == "succeeded"
    started = _at(done["started_at"])
    assert run_at <= started < run_at + timedelta(seconds=3), (run_at, started)  # stated: released within 2 s
    row = Job.objects.get(pk=job["id"])
    assert row.queued_at is not None and row.queued_at >= run_at
    assert credit_balance(user=user) == before - job["cost"]
    listed = http_api.client.get("/api/v1/jobs/", params={"status": "succeeded"}).json()["results"]
    assert [item["id"] for item in listed] == [job["id"]]


def test_cancel_while_scheduled_refunds_in_full(http_api: Api, user: User) -> None:
    before = credit_balance(user=user)
    job = http_api.submit(run_at=_in(600))
    assert credit_balance(user=user) < before
    rq_scheduled = queues.get_queue(queues.JOBS_QUEUE).scheduled_job_registry
    assert queues.release_rq_id(job["id"]) in rq_scheduled.get_job_ids()
    listed = http_api.client.get("/api/v1/jobs/", params={"status": "scheduled"}).json()["results"]
    assert [item["id"] for item in listed] == [job["id"]]

    canceled = http_api.client.post(f"/api/v1/jobs/{job['id']}/cancel/")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    assert credit_balance(user=user) == before
    assert LedgerEntry.objects.filter(posting_key=refund_key(job["id"]), amount=job["cost"]).exists()
    assert queues.release_rq_id(job["id"]) not in rq_scheduled.get_job_ids()  # its release is gone from Redis
    assert http_api.client.post(f"/api/v1/jobs/{job['id']}/cancel/").status_code == 409
    assert_ledger_explains_balance(user)


@pytest.mark.slow
@override_settings(RECONCILE_QUEUED_GRACE=0)
def test_reconciler_releases_a_due_job_whose_schedule_redis_lost(http_api: Api, start_worker) -> None:
    job = http_api.submit(run_at=_in(1))
    get_redis().flushdb()  # the schedule is gone (FLUSHDB of the test database only)
    assert held_jobs_reconcile() == {"released": 0, "dependency_failed": 0}  # not due yet: left alone
    wait_until(lambda: datetime.now(UTC) > _at(job["run_at"]))

    report = reconcile()  # what the cron runs
    assert (report["released"], report["dependency_failed"]) == (1, 0)
    assert Job.objects.get(pk=job["id"]).status == JobStatus.QUEUED
    assert held_jobs_reconcile() == {"released": 0, "dependency_failed": 0}  # idempotent
    start_worker()
    assert http_api.final(job["id"])["status"] == "succeeded"


def test_run_at_validation(api: APIClient, user: User, fresh_policies: None) -> None:
    set_policy("jobs.async", max_schedule_ahead=3600)
    balance = credit_balance(user=user)
    beyond = api.post("/api/v1/jobs/async/", {**HASH, "run_at": _in(3700)}, format="json")
    assert _problem_fields(beyond) == ["run_at"]
    assert "3600" in beyond.json()["errors"][0]["message"]
    naive = datetime.now() + timedelta(seconds=60)
    assert _problem_fields(api.post("/api/v1/jobs/async/", {**HASH, "run_at": naive.isoformat()}, format="json")) == [
        "run_at"
    ]
    assert _problem_fields(api.post("/api/v1/jobs/sync/", {**HASH, "run_at": _in(60)}, format="json")) == ["run_at"]
    assert _problem_fields(api.post("/api/v1/jobs/sync/", {**HASH, "depends_on": []}, format="json")) == ["depends_on"]
    bad_flag = {**HASH, "allow_dependency_failure": "yes"}
    assert _problem_fields(api.post("/api/v1/jobs/async/", bad_flag, format="json")) == ["allow_dependency_failure"]
    assert Job.objects.count() == 0 and credit_balance(user=user) == balance  # refused: nothing changed

    past = api.post("/api/v1/jobs/async/", {**HASH, "run_at": _in(-60)}, format="json")
    assert past.status_code == 202 and past.json()["status"] == "queued"  # past or now: at once
    within = api.post("/api/v1/jobs/async/", {**HASH, "run_at": _in(3500)}, format="json")
    assert within.status_code == 202 and within.json()["status"] == "scheduled"
    set_policy("jobs.async", max_schedule_ahead=0)
    assert _problem_fields(api.post("/api/v1/jobs/async/", {**HASH, "run_at": _in(60)}, format="json")) == ["run_at"]


def test_concurrency_cap_counts_a_scheduled_job_from_its_release(
    api: APIClient, user: User, fresh_policies: None
) -> None:
    set_policy("jobs.async", max_concurrent_per_user=1)
    queued = api.post("/api/v1/jobs/async/", HASH, format="json").json()
    held = api.post("/api/v1/jobs/async/", {**HASH, "run_at": _in(600)}, format="json")
    assert held.status_code == 202, held.content  # the cap is full, but a held job takes no slot
    assert api.post("/api/v1/jobs/async/", HASH, format="json").status_code == 429
    slot = ConcurrencySlot.objects.get(owner=user, endpoint="jobs.async")
    assert slot.in_use == 1

    Job.objects.filter(pk=held.json()["id"]).update(run_at=datetime.now(UTC))  # due now
    assert job_held_settle(job_id=held.json()["id"]) == Settled.DEFERRED  # cap full at release: stays scheduled
    assert Job.objects.get(pk=held.json()["id"]).status == JobStatus.SCHEDULED
    retries = queues.get_queue(queues.JOBS_QUEUE).scheduled_job_registry.get_job_ids()
    assert len(retries) == 2  # its run_at release and the retry CONCURRENCY_CAP_RETRY_AFTER later
    slot.refresh_from_db()
    assert slot.in_use == 1

    run_worker_burst()  # the queued job runs and gives its slot back
    assert Job.objects.get(pk=queued["id"]).status == JobStatus.SUCCEEDED
    assert job_held_settle(job_id=held.json()["id"]) == Settled.RELEASED
    slot.refresh_from_db()
    assert slot.in_use == 1  # now it counts
    run_worker_burst()
    assert Job.objects.get(pk=held.json()["id"]).status == JobStatus.SUCCEEDED
    slot.refresh_from_db()
    assert slot.in_use == 0


@pytest.mark.slow
def test_full_cap_at_release_waits_for_a_slot_with_real_workers(
    http_api: Api, start_worker, fresh_policies: None
) -> None:
    set_policy("jobs.async", max_concurrent_per_user=1)
    first = http_api.submit()
    held = http_api.submit(run_at=_in(1))
    wait_until(lambda: datetime.now(UTC) > _at(held["run_at"]))
    start_worker()
    first_done, held_done = http_api.final(first["id"]), http_api.final(held["id"])
    assert first_done["status"] == held_done["status"] == "succeeded"
    # One slot: the held job was queued only once the first had given it back.
    assert Job.objects.get(pk=held["id"]).queued_at >= _at(first_done["finished_at"])


# --- Dependencies ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_chain_runs_in_order(http_api: Api, start_worker) -> None:
    start_worker()
    a = http_api.submit(run_at=_in(2))
    b = http_api.submit(depends_on=[a["id"]])
    c = http_api.submit(depends_on=[b["id"]])
    assert (b["status"], c["status"]) == ("waiting", "waiting")
    assert c["depends_on"] == [b["id"]] and c["allow_dependency_failure"] is False
    assert http_api.client.get("/api/v1/jobs/", params={"status": "waiting"}).json()["results"][0]["id"] == c["id"]

    done = [http_api.final(job["id"]) for job in (a, b, c)]
    assert [job["status"] for job in done] == ["succeeded"] * 3
    assert _at(done[0]["finished_at"]) <= _at(done[1]["started_at"])
    assert _at(done[1]["finished_at"]) <= _at(done[2]["started_at"])


@pytest.mark.slow
def test_a_failure_fails_its_dependents_transitively_and_refunds_them(
    http_api: Api, user: User, start_worker, failing_target: LocalHTTPServer
) -> None:
    before = credit_balance(user=user)
    a = http_api.submit(kind="fetch", input={"url": failing_target.url})
    b = http_api.submit(depends_on=[a["id"]])
    c = http_api.submit(depends_on=[b["id"]])
    tolerant = http_api.submit(depends_on=[a["id"]], allow_dependency_failure=True)
    start_worker()
    assert http_api.final(a["id"])["error"]["code"] == "upstream_error"
    for job in (b, c):
        failed = http_api.final(job["id"])
        assert failed["status"] == "failed" and failed["error"]["code"] == "dependency_failed"
        assert failed["started_at"] is None and failed["attempts"] == 0  # never ran
        assert LedgerEntry.objects.filter(posting_key=refund_key(job["id"]), amount=job["cost"]).count() == 1
    assert a["id"] in http_api.job(b["id"])["error"]["message"]
    assert http_api.final(tolerant["id"])["status"] == "succeeded"  # it runs once a is final, whatever a's outcome
    assert credit_balance(user=user) == before - tolerant["cost"]  # a (upstream's fault), b and c refunded
    assert_ledger_explains_balance(user)


def test_canceling_a_dependency_fails_a_long_chain(api: APIClient, user: User) -> None:
    """Propagation is a loop, not recursion: recursing would take about ten frames a level, so a chain of 150
    would pass Python's limit of 1000."""
    head = api.post("/api/v1/jobs/async/", {**HASH, "run_at": _in(600)}, format="json").json()
    previous, chain = head["id"], []
    for _ in range(150):
        previous = api.post("/api/v1/jobs/async/", {**HASH, "depends_on": [previous]}, format="json").json()["id"]
        chain.append(previous)
    before = credit_balance(user=user)
    assert api.post(f"/api/v1/jobs/{head['id']}/cancel/").status_code == 200
    statuses = set(Job.objects.filter(pk__in=chain).values_list("status", "error_code"))
    assert statuses == {(JobStatus.FAILED, "dependency_failed")}
    assert credit_balance(user=user) == before + 151 * head["cost"]  # the head and every dependent refunded
    assert_ledger_explains_balance(user)


def test_depends_on_refuses_foreign_unknown_duplicate_and_too_many(
    api: APIClient, client_for: Callable[[User], APIClient], user: User, other_user: User
) -> None:
    mine = api.post("/api/v1/jobs/async/", HASH, format="json").json()["id"]
    theirs = client_for(other_user).post("/api/v1/jobs/async/", HASH, format="json").json()["id"]
    balance, jobs = credit_balance(user=user), Job.objects.count()
    for depends_on in ([mine, theirs], [str(uuid.uuid4())], [mine, mine], [mine] * (DEPENDS_ON_MAX + 1), [7]):
        response = api.post("/api/v1/jobs/async/", {**HASH, "depends_on": depends_on}, format="json")
        assert [field.split(".")[0] for field in _problem_fields(response)] == ["depends_on"], depends_on
    foreign = api.post("/api/v1/jobs/async/", {**HASH, "depends_on": [theirs]}, format="json").json()
    assert theirs in foreign["errors"][0]["message"]  # named as absent: another user's job is not revealed
    assert (credit_balance(user=user), Job.objects.count()) == (balance, jobs)  # nothing charged or recorded
    assert not Job.objects.get(pk=mine).has_dependents


def test_cycles_are_refused(api: APIClient, user: User) -> None:
    """A cycle needs a job that already has dependents, as jobs of one batch may: the rule is in the service."""
    a = Job.objects.get(pk=api.post("/api/v1/jobs/async/", {**HASH, "run_at": _in(600)}, format="json").json()["id"])
    b = api.post("/api/v1/jobs/async/", {**HASH, "depends_on": [str(a.pk)]}, format="json").json()["id"]
    c = api.post("/api/v1/jobs/async/", {**HASH, "depends_on": [b]}, format="json").json()["id"]
    a.refresh_from_db()
    with pytest.raises(InvalidInput) as refused, transaction.atomic():
        job_dependencies_add(job=a, depends_on=[uuid.UUID(c)])  # a -> c -> b -> a
    assert refused.value.extra["errors"][0]["field"] == "depends_on"
    assert not JobDependency.objects.filter(job=a).exists()


def test_a_dependency_already_final_settles_at_submission(api: APIClient, user: User) -> None:
    done = api.post("/api/v1/jobs/sync/", HASH, format="json").json()
    queued = api.post("/api/v1/jobs/async/", {**HASH, "depends_on": [done["id"]]}, format="json").json()
    assert queued["status"] == "queued"
    later = api.post("/api/v1/jobs/async/", {**HASH, "depends_on": [done["id"]], "run_at": _in(600)}, format="json")
    assert later.json()["status"] == "scheduled"  # dependencies done, run_at ahead
    canceled = api.post("/api/v1/jobs/async/", {**HASH, "run_at": _in(600)}, format="json").json()
    api.post(f"/api/v1/jobs/{canceled['id']}/cancel/")
    doomed = api.post("/api/v1/jobs/async/", {**HASH, "depends_on": [canceled["id"]]}, format="json").json()
    assert doomed["status"] == "failed" and doomed["error"]["code"] == "dependency_failed"


def test_a_dependent_added_while_its_dependency_runs_is_settled(api: APIClient) -> None:
    """The worker read has_dependents when it claimed the job; its finish must not trust that copy."""
    a = api.post("/api/v1/jobs/async/", HASH, format="json").json()
    running = job_claim(uuid.UUID(a["id"]))
    assert running is not None and not running.has_dependents
    b = api.post("/api/v1/jobs/async/", {**HASH, "depends_on": [a["id"]]}, format="json").json()
    assert b["status"] == "waiting"
    assert job_finish(running, status=JobStatus.SUCCEEDED, result={})
    assert Job.objects.get(pk=b["id"]).status == JobStatus.QUEUED


def test_reconciler_settles_waiting_jobs_whose_release_was_lost(api: APIClient, user: User) -> None:
    a = api.post("/api/v1/jobs/async/", {**HASH, "run_at": _in(600)}, format="json").json()
    b = api.post("/api/v1/jobs/async/", {**HASH, "depends_on": [a["id"]]}, format="json").json()
    c = api.post("/api/v1/jobs/async/", {**HASH, "depends_on": [a["id"]]}, format="json").json()
    assert held_jobs_reconcile() == {"released": 0, "dependency_failed": 0}  # a is not final: nothing to do
    # a's end as a crash between its commit and its dependents' release leaves it: the rows only.
    Job.objects.filter(pk=a["id"]).update(status=JobStatus.SUCCEEDED)
    Job.objects.filter(pk=c["id"]).update(depends_on=[a["id"], str(uuid.uuid4())])  # and a dependency gone
    assert held_jobs_reconcile() == {"released": 1, "dependency_failed": 1}
    assert Job.objects.get(pk=b["id"]).status == JobStatus.QUEUED
    assert Job.objects.get(pk=c["id"]).error_code == "dependency_failed"
    assert held_jobs_reconcile() == {"released": 0, "dependency_failed": 0}
    assert_ledger_explains_balance(user)


def test_compat_reads_show_held_api_jobs_as_pending(api: APIClient) -> None:
    job = api.post("/api/v1/jobs/async/", {**HASH, "run_at": _in(600)}, format="json").json()
    listed = api.get("/requests", {"limit": 5})
    assert listed.status_code == 200
    assert [item["status"] for item in listed.json()["requests"] if item["request_id"] == job["id"]] == ["pending"]


@pytest.mark.slow
def test_the_client_schedules_chains_and_cancels(server_url: str, user: User, start_worker) -> None:
    sys.path.insert(0, str(ROOT / "jobsite-client"))  # until requirements-dev installs ./jobsite-client
    import jobsite_client as jc

    key = auth_headers(user)["Authorization"].removeprefix("Bearer ")
    with jc.Client(server_url, key, timeout=30) as client:
        later = client.submit("hash", HASH["input"], run_at=datetime.now(UTC) + timedelta(hours=1))
        assert later.status == "scheduled" and later.run_at is not None and not later.finished
        after = client.submit("hash", HASH["input"], depends_on=[later.id], allow_dependency_failure=True)
        assert (after.status, after.depends_on, after.allow_dependency_failure) == ("waiting", [later.id], True)
        assert client.cancel(later.id).status == "canceled"
        start_worker()
        assert client.wait(after.id, timeout=20).status == "succeeded"
        with pytest.raises(ValueError, match="timezone-aware"):
            client.submit("hash", HASH["input"], run_at=datetime.now())


# --- Query budgets (as tests/test_query_budget.py counts them: BEGIN and COMMIT included) ----------------------

SCHEDULED_ACK = 5
"""BEGIN, INSERT job, UPDATE account (charge), INSERT ledger entry, COMMIT: no cap, queue room or cache lookup."""
WAITING_ACK = 10
"""BEGIN, INSERT job, SELECT ... FOR UPDATE its dependencies, UPDATE their has_dependents, INSERT the edges, the
charge (2), COMMIT; then settling it reads the job and its dependencies' statuses (2)."""


def test_held_submissions_stay_within_their_budgets(api: APIClient, django_assert_max_num_queries: Any) -> None:
    api.post("/api/v1/jobs/async/", {**HASH, "run_at": _in(600)}, format="json")  # fills the per-process caches
    with django_assert_max_num_queries(SCHEDULED_ACK):
        first = api.post("/api/v1/jobs/async/", {**HASH, "run_at": _in(600)}, format="json").json()
    with django_assert_max_num_queries(WAITING_ACK):
        waiting = api.post("/api/v1/jobs/async/", {**HASH, "depends_on": [first["id"]]}, format="json").json()
    assert (first["status"], waiting["status"]) == ("scheduled", "waiting")


@pytest.mark.slow
def test_dependents_submitted_while_their_dependency_fails_all_fail_refunded(server_url: str, user: User) -> None:
    """Submissions lock the dependency before the charge, as its finish locks its row before the refund: run
    together (PostgreSQL's row locks) they neither deadlock nor lose a dependent, whichever commits first."""
    headers = auth_headers(user)
    a = Job.objects.get(pk=httpx.post(f"{server_url}/api/v1/jobs/async/", json=HASH, headers=headers).json()["id"])
    running = job_claim(a.pk)
    assert running is not None
    before = credit_balance(user=user)

    def send(client: httpx.Client, index: int) -> httpx.Response:
        if index == 0:
            job_finish(running, status=JobStatus.FAILED, error_code="upstream_error", error_message="down")
            return httpx.Response(202, json={"id": str(a.pk)})
        return client.post(
            f"{server_url}/api/v1/jobs/async/", json={**HASH, "depends_on": [str(a.pk)]}, headers=headers
        )

    responses = fire_concurrently(21, send)
    assert [response.status_code for response in responses] == [202] * 21
    dependents = [response.json()["id"] for response in responses[1:]]
    wait_until(lambda: not Job.objects.filter(pk__in=dependents, status=JobStatus.WAITING).exists(), timeout=10)
    outcomes = set(Job.objects.filter(pk__in=dependents).values_list("status", "error_code"))
    assert outcomes == {(JobStatus.FAILED, "dependency_failed")}
    assert credit_balance(user=user) == before + a.cost  # a refunded, every dependent charged and refunded
    assert_ledger_explains_balance(user)


def test_the_export_shows_held_jobs_as_the_api_does(api: APIClient, user: User) -> None:
    first = api.post("/api/v1/jobs/async/", {**HASH, "run_at": _in(600)}, format="json").json()
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=500000)
    at_plus_two = tomorrow.astimezone(timezone(timedelta(hours=2))).isoformat()
    second = api.post("/api/v1/jobs/async/", {**HASH, "run_at": at_plus_two}, format="json").json()
    api.post("/api/v1/jobs/async/", {**HASH, "depends_on": [first["id"], second["id"]]}, format="json")
    exported = [json.loads(line) for line in api.get("/api/v1/jobs/export/").getvalue().decode().splitlines()]
    assert exported == api.get("/api/v1/jobs/").json()["results"]
    assert exported[0]["depends_on"] == [first["id"], second["id"]] and exported[1]["run_at"] == tomorrow.strftime(
        "%Y-%m-%dT%H:%M:%S.500000Z"
    )

"""Query budgets of the hot path, through the full API with an API key, in the steady state.

Budgets count database round trips as Django captures them, BEGIN and COMMIT included (an autocommit
statement is one round trip, a transaction of n statements is n + 2). Steady state: the second request, with
the API key, its user and roles, the endpoint policies and the kind settings in the per-process caches, so
authentication and policy checks cost 0 statements. Every policy is on and never refuses: a per-user and a
global concurrency cap, a rate limit (Redis), a credit charge, the result cache (a miss: unique data).

PostgreSQL writes an acceptance in one data-modifying statement (jobs.acceptance: slot, job, charge, key; a global
cap's advisory lock goes in the same query) and a success's finish in another (outcome and slot), SQLite in
separate statements:

- async acknowledgement, PostgreSQL 1: the acceptance, in autocommit. SQLite 6 = BEGIN, the per-user counter's
  conditional upsert (which also sums the endpoint's counters against the global cap), INSERT job, UPDATE
  account, INSERT ledger entry, COMMIT.
- sync job, PostgreSQL 2 = the acceptance, the run, then the outcome's UPDATE with the slot's release (autocommit:
  a success writes nothing else). SQLite 10 = the acknowledgement's 6, the run, then BEGIN, UPDATE job (finish),
  UPDATE counter (release), COMMIT. The response serialises the job in memory: nothing is read back.
- with an Idempotency-Key, async: PostgreSQL +0, SQLite +1: the job's acceptance claims the key, INSERTing its
  record tied to the job with the acknowledgement stored (PostgreSQL: in its statement; SQLite: one INSERT in its
  transaction). Sync: PostgreSQL +0, SQLite +2: the acceptance claims the key tied to the job (a request that dies
  is answered by its job) and the outcome's statement stores the response (PostgreSQL; SQLite: one INSERT in the
  acceptance's transaction, one UPDATE after the run).
- an anonymous sync job on the compatible route /sync, PostgreSQL 2, SQLite 8: the sync job less the charge
  (anonymous jobs are free) and without a key to look up; the anonymous owner is cached per process like the policies.
- the same as shipped (the compatible routes have no caps), 1: a free job of an uncapped endpoint without an
  Idempotency-Key has nothing that must commit before it runs, so it is recorded once, with its outcome: one
  INSERT in autocommit (before: BEGIN, INSERT, COMMIT, the run, BEGIN, UPDATE, COMMIT).
- async acknowledgement held by `Prefer: wait` until the job is final, +2: the wait itself blocks on Redis (one
  XREAD BLOCK per 10 s), not the database; woken, it reads the final job once (the job, its delivery attempts).
- a batch, 8 however many jobs: BEGIN, [global cap: advisory lock], the per-user counter's upsert (all the
  batch's slots at once, summed against the global cap), INSERT batch, INSERT jobs (one multi-row INSERT; SQLite: one per ~30 jobs, Django's
  bound-parameter limit there), UPDATE account (the total), INSERT ledger entries (one multi-row INSERT), COMMIT.
- a batch whose requests depend on each other and on existing jobs, 12 however many jobs: the batch's 8, the
  dependencies' edges (one multi-row INSERT), and for the named existing jobs: the check that they are the
  owner's (before the transaction), their SELECT ... FOR UPDATE and the UPDATE of their has_dependents flag.
- job detail, 2: the job, its delivery attempts (one prefetch).
- job list, 3: COUNT for the page, the page, the delivery attempts of the whole page (one prefetch):
  the same at 1 and at 50 jobs.
SQLite takes no advisory lock: its write transactions are serialised from BEGIN IMMEDIATE.

Redis round trips, exact: a sync job 3 (the rate limits in one script, the cache lookup, the cache store), an
async acknowledgement 4 (the rate limits, the cache lookup, the queue's depth, the enqueue in one MULTI).

The gate (authentication, policies, permissions) costs no statement: keys, roles, allowlists and policies are
cached per process (accounts.selectors, jobsite.process_cache); tests/test_gate.py holds it to that.
"""

import contextlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from accounts.models import User
from bench.overhead import redis_round_trips
from jobs.models import Job, JobStatus
from tests.access_helpers import open_compat_to_anonymous, set_policy
from tests.conftest import run_worker_burst
from tests.job_helpers import kind_settings

pytestmark = pytest.mark.django_db(transaction=True)

ON_POSTGRESQL = connection.vendor == "postgresql"
ASYNC_ACK = 1 if ON_POSTGRESQL else 6
SYNC_JOB = 2 if ON_POSTGRESQL else 10
ASYNC_IDEMPOTENCY_KEY = 0 if ON_POSTGRESQL else 1
SYNC_IDEMPOTENCY_KEY = 0 if ON_POSTGRESQL else 2
REPLAY = 2
"""A replayed key (its result cached: a cache hit claims the key first): the claim's INSERT finds the key taken,
one SELECT reads the stored response."""
COMPAT_ANONYMOUS_SYNC = 2 if ON_POSTGRESQL else 8
COMPAT_ANONYMOUS_SYNC_AS_SHIPPED = 1
BATCH = 8
BATCH_WITH_DEPENDENCIES = 12
JOB_DETAIL = 2
JOB_LIST = 3
HELD_WAKE = 2

EVERY_POLICY = {
    "rate_limit_algorithm": "token_bucket",
    "rate_limit": 1_000_000,
    "refill_rate": 1_000_000,
    "rate_window": 60,
    "max_concurrent_per_user": 1000,
    "max_concurrent_global": 100_000,
}
"""Every limit of an endpoint policy on, none of them ever refusing."""


@pytest.fixture
def api(client_for: Callable[[User], APIClient], user: User) -> APIClient:
    for name in ("jobs.sync", "jobs.async", "jobs.batch"):
        set_policy(name, **EVERY_POLICY)
    kind_settings("hash", cost=1, cache_algorithm="lru")
    return client_for(user)


def unique_hash() -> dict[str, Any]:
    """Data never seen before: the result cache misses."""
    return {"kind": "hash", "input": {"data": uuid.uuid4().hex, "iterations": 1}}


def submit(api: APIClient, path: str, *, key: bool) -> Any:
    headers = {"Idempotency-Key": uuid.uuid4().hex} if key else {}
    response = api.post(path, unique_hash(), format="json", headers=headers)
    assert response.status_code in (200, 202), response.content
    return response


@pytest.mark.parametrize(
    ("path", "budget", "key_budget"),
    [("/api/v1/jobs/sync/", SYNC_JOB, SYNC_IDEMPOTENCY_KEY), ("/api/v1/jobs/async/", ASYNC_ACK, ASYNC_IDEMPOTENCY_KEY)],
    ids=["sync", "async"],
)
@pytest.mark.parametrize("key", [False, True], ids=["no-key", "idempotency-key"])
def test_a_submission_stays_within_its_budget(
    api: APIClient, path: str, budget: int, key_budget: int, key: bool, django_assert_num_queries: Any
) -> None:
    submit(api, path, key=key)  # the first request fills the per-process caches
    with django_assert_num_queries(budget + (key_budget if key else 0)):
        submit(api, path, key=key)


@pytest.mark.parametrize(
    ("path", "trips"),
    [
        ("/api/v1/jobs/sync/", ["EVALSHA", "EVALSHA", "EVALSHA"]),
        ("/api/v1/jobs/async/", ["EVALSHA", "EVALSHA", "pipeline[LLEN MGET]", "pipeline[SADD HSET HSET EVAL EVAL]"]),
    ],
    ids=["sync", "async"],
)
def test_a_submission_makes_its_redis_round_trips(api: APIClient, path: str, trips: list[str]) -> None:
    """The rate limits (one script for all), the cache lookup; then the cache store (sync), or the queue's depth and
    the enqueue (async: RQ's records and the lane's staging in one MULTI, nothing sent ahead of it)."""
    submit(api, path, key=False)
    with redis_round_trips() as sent:
        submit(api, path, key=False)
    assert sent == trips


def test_a_held_submission_waits_on_redis_and_reads_the_job_once(
    api: APIClient, start_worker: Callable[..., Any], django_assert_max_num_queries: Any
) -> None:
    submit(api, "/api/v1/jobs/async/", key=False)
    run_worker_burst()  # the first request filled the caches; its job is out of the way
    start_worker("jobs")  # its queries are its own process's
    with django_assert_max_num_queries(ASYNC_ACK + HELD_WAKE):
        response = api.post("/api/v1/jobs/async/", unique_hash(), format="json", headers={"Prefer": "wait=30"})
    assert response.status_code == 200 and response.json()["status"] == "succeeded", response.content
    assert response["Preference-Applied"] == "wait=30"


def test_an_anonymous_compat_sync_job_reads_nothing(django_assert_max_num_queries: Any) -> None:
    open_compat_to_anonymous()
    set_policy("compat.sync", auth_required=False, **EVERY_POLICY)
    anonymous = APIClient()
    assert anonymous.post("/sync", {"data": uuid.uuid4().hex, "iterations": 1}, format="json").status_code == 200
    with django_assert_max_num_queries(COMPAT_ANONYMOUS_SYNC):
        assert anonymous.post("/sync", {"data": uuid.uuid4().hex, "iterations": 1}, format="json").status_code == 200


def test_an_anonymous_compat_sync_job_as_shipped_is_one_insert(django_assert_num_queries: Any) -> None:
    open_compat_to_anonymous()
    anonymous = APIClient()
    assert anonymous.post("/sync", {"data": uuid.uuid4().hex, "iterations": 1}, format="json").status_code == 200
    with django_assert_num_queries(COMPAT_ANONYMOUS_SYNC_AS_SHIPPED) as captured:
        response = anonymous.post("/sync", {"data": uuid.uuid4().hex, "iterations": 1}, format="json")
    assert response.status_code == 200
    assert captured.captured_queries[0]["sql"].startswith('INSERT INTO "jobs_job"')
    job = Job.objects.order_by("-created_at").first()
    assert job is not None
    assert (job.status, job.attempts, job.cost) == (JobStatus.SUCCEEDED, 1, 0)
    assert job.created_at == job.started_at <= job.finished_at


def test_a_replayed_key_is_one_failed_insert_and_one_read(api: APIClient, django_assert_max_num_queries: Any) -> None:
    body, headers = unique_hash(), {"Idempotency-Key": "replayed"}
    first = api.post("/api/v1/jobs/sync/", body, format="json", headers=headers)
    with django_assert_max_num_queries(REPLAY):
        replay = api.post("/api/v1/jobs/sync/", body, format="json", headers=headers)
    assert replay["Idempotent-Replayed"] == "true" and replay.json() == first.json()


def test_a_job_detail_stays_within_its_budget(api: APIClient, django_assert_max_num_queries: Any) -> None:
    job_id = submit(api, "/api/v1/jobs/sync/", key=False).json()["id"]
    api.get(f"/api/v1/jobs/{job_id}/")
    with django_assert_max_num_queries(JOB_DETAIL):
        assert api.get(f"/api/v1/jobs/{job_id}/").status_code == 200


def list_queries(api: APIClient) -> int:
    api.get("/api/v1/jobs/")
    with CaptureQueriesContext(connection) as queries:
        response = api.get("/api/v1/jobs/")
    assert response.status_code == 200
    return len(queries)


def test_a_job_list_costs_the_same_at_1_and_at_50_jobs(api: APIClient) -> None:
    submit(api, "/api/v1/jobs/sync/", key=False)
    at_one = list_queries(api)
    for _ in range(24):
        submit(api, "/api/v1/jobs/sync/", key=False)
    for _ in range(25):
        submit(api, "/api/v1/jobs/async/", key=False)
    run_worker_burst()
    assert len(api.get("/api/v1/jobs/").json()["results"]) == 50
    assert list_queries(api) == at_one <= JOB_LIST


@pytest.mark.parametrize("jobs", [1, 25])
def test_a_batch_costs_the_same_round_trips_at_1_and_at_25_jobs(
    api: APIClient, jobs: int, django_assert_max_num_queries: Any
) -> None:
    def batch() -> None:
        response = api.post("/api/v1/batches/", {"requests": [unique_hash() for _ in range(jobs)]}, format="json")
        assert response.status_code == 202, response.content

    batch()  # the first request fills the per-process caches
    with django_assert_max_num_queries(BATCH):
        batch()


@pytest.mark.parametrize("jobs", [1, 25])
def test_a_batch_with_dependencies_costs_the_same_round_trips_at_1_and_at_25_jobs(
    api: APIClient, jobs: int, django_assert_max_num_queries: Any
) -> None:
    def batch(budget: int | None) -> None:
        later = {**unique_hash(), "run_at": (datetime.now(UTC) + timedelta(days=1)).isoformat()}  # not final
        existing = api.post("/api/v1/jobs/async/", later, format="json").json()["id"]
        # Each request waits for the one before it, the first for the existing job.
        requests = [{**unique_hash(), "depends_on": [i - 1 if i else existing]} for i in range(jobs)]
        with django_assert_max_num_queries(budget) if budget else contextlib.nullcontext():
            response = api.post("/api/v1/batches/", {"requests": requests}, format="json")
        assert response.status_code == 202, response.content
        assert response.json()["request_counts"]["waiting"] == jobs

    batch(None)  # the first request fills the per-process caches
    batch(BATCH_WITH_DEPENDENCIES)

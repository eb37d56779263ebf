"""A job's acceptance (jobs.acceptance on PostgreSQL, jobs.pipeline's transaction elsewhere): the slot, the job, the
charge and the Idempotency-Key's binding are written all together or not at all, whichever refuses."""

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from accounts.models import User
from credits.models import CreditAccount, LedgerEntry
from credits.selectors import credit_balance
from jobs.models import ConcurrencySlot, IdempotencyRecord, Job
from tests.access_helpers import set_policy
from tests.job_helpers import assert_ledger_explains_balance, kind_settings, set_balance

pytestmark = pytest.mark.django_db(transaction=True)

ASYNC = "/api/v1/jobs/async/"


@pytest.fixture
def api(client_for: Callable[[User], APIClient], user: User) -> APIClient:
    set_policy("jobs.async", max_concurrent_per_user=2, max_concurrent_global=0)
    kind_settings("hash", cost=3, cache_algorithm="none")
    return client_for(user)


def submit(api: APIClient, *, key: str = "") -> Any:
    body = {"kind": "hash", "input": {"data": uuid.uuid4().hex, "iterations": 1}}
    return api.post(ASYNC, body, format="json", headers={"Idempotency-Key": key} if key else {})


def written(user: User) -> tuple[int, int, int, int]:
    """What an acceptance writes: the user's jobs, ledger entries, slots in use, balance."""
    slots = ConcurrencySlot.objects.filter(owner=user).values_list("in_use", flat=True)
    return (
        Job.objects.filter(owner=user).count(),
        LedgerEntry.objects.filter(account_id=user.pk).count(),
        sum(slots),
        credit_balance(user=user),
    )


def test_an_accepted_job_holds_its_slot_its_charge_and_its_key(api: APIClient, user: User) -> None:
    set_balance(user, 10)
    before = written(user)
    response = submit(api, key="accepted-once")
    assert response.status_code == 202, response.content
    job = Job.objects.get(pk=response.json()["id"])
    assert (job.holds_slot, job.cost) == (True, 3)
    assert written(user) == (before[0] + 1, before[1] + 1, 1, 7)
    assert LedgerEntry.objects.get(posting_key=f"charge:{job.pk}").balance_after == 7
    assert IdempotencyRecord.objects.get(owner=user, key="accepted-once").job_id == job.pk
    assert_ledger_explains_balance(user)


def test_a_capped_submission_writes_nothing(api: APIClient, user: User) -> None:
    set_balance(user, 10)
    assert [submit(api).status_code for _ in range(2)] == [202, 202]
    before = written(user)
    refused = submit(api, key="refused-by-the-cap")
    assert refused.status_code == 429 and refused.json()["code"] == "rate_limited", refused.content
    assert refused.json()["limit"]["cap"] == "max_concurrent_per_user"
    assert written(user) == before and before[2:] == (2, 4)
    assert not IdempotencyRecord.objects.filter(key="refused-by-the-cap", job__isnull=False).exists()


def test_a_charge_beyond_the_balance_gives_the_slot_back(api: APIClient, user: User) -> None:
    set_balance(user, 2)  # the job costs 3: the slot taken before the charge must not stay taken
    before = written(user)
    refused = submit(api, key="refused-by-the-balance")
    assert refused.status_code == 402, refused.content
    assert (refused.json()["code"], refused.json()["balance"], refused.json()["cost"]) == ("insufficient_credits", 2, 3)
    assert written(user) == before and before[2:] == (0, 2)
    assert not IdempotencyRecord.objects.filter(key="refused-by-the-balance", job__isnull=False).exists()
    set_balance(user, 3)
    assert submit(api).status_code == 202  # nothing was left held: the next one goes through
    assert written(user)[2:] == (1, 0)


def test_an_owner_without_a_credit_account_is_refused_having_nothing_written(api: APIClient, user: User) -> None:
    CreditAccount.objects.filter(user=user).delete()  # the account the statement charges is missing
    refused = submit(api)
    assert refused.status_code == 402 and refused.json()["balance"] == 0, refused.content
    assert written(user) == (0, 0, 0, 0)


def test_a_global_cap_counts_every_owner(
    api: APIClient, user: User, client_for: Callable[[User], APIClient], make_user: Callable[..., User]
) -> None:
    set_policy("jobs.async", max_concurrent_per_user=0, max_concurrent_global=2)
    other = make_user()
    set_balance(user, 10)
    set_balance(other, 10)
    assert submit(api).status_code == 202
    assert submit(client_for(other)).status_code == 202
    refused = submit(api)
    assert refused.status_code == 429 and refused.json()["limit"]["cap"] == "max_concurrent_global", refused.content
    assert written(user)[::2] == (1, 1) and written(user)[3] == 7


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite has no data-modifying CTEs")
@pytest.mark.parametrize("global_cap", [0, 100], ids=["per-user-cap", "global-cap-too"])
def test_on_postgresql_an_acknowledgement_is_one_round_trip(api: APIClient, user: User, global_cap: int) -> None:
    set_policy("jobs.async", max_concurrent_per_user=2, max_concurrent_global=global_cap)
    set_balance(user, 10)
    submit(api)  # fills the per-process caches
    with CaptureQueriesContext(connection) as queries:
        response = submit(api)
    assert response.status_code == 202, response.content
    (statement,) = [query["sql"] for query in queries.captured_queries]
    # A global cap's lock is taken inside the statement, by the function that then sums in a snapshot of its own.
    assert statement.startswith("WITH account AS"), statement
    assert ("jobs_endpoint_in_use_locked(" in statement) == bool(global_cap), statement
    assert written(user)[2] == 2


@pytest.mark.skipif(connection.vendor != "postgresql", reason="prepared statements: PostgreSQL")
def test_on_postgresql_a_repeated_acceptance_is_prepared(api: APIClient, user: User) -> None:
    set_policy("jobs.async", max_concurrent_per_user=10, max_concurrent_global=100)
    set_balance(user, 100)
    assert [submit(api).status_code for _ in range(6)] == [202] * 6  # psycopg prepares on the fifth run
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [statement for (statement,) in cursor.fetchall()]
    accepting = [statement for statement in prepared if "jobs_endpoint_in_use_locked(" in statement]
    assert len(accepting) == 1 and accepting[0].startswith("WITH account AS"), prepared
    assert written(user)[2] == 6


def _wal_flushes() -> int:
    """The cluster's WAL flushes so far, this connection's pending statistics included."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")  # reported as the connection goes idle, before the next
        cursor.execute("SELECT wal_sync FROM pg_stat_wal")
        (flushes,) = cursor.fetchone()
    return int(flushes)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the WAL's flushes: PostgreSQL")
def test_on_postgresql_a_policed_sync_job_waits_for_one_wal_flush(api: APIClient, user: User) -> None:
    # Its acceptance commits without waiting; its outcome's flush, which covers the acceptance, precedes the answer.
    set_policy("jobs.sync", max_concurrent_per_user=10, max_concurrent_global=100)
    set_balance(user, 200)
    jobs, counts = 20, []
    # The count is the cluster's: other connections report theirs up to 10 s late, which only adds. Waiting for each
    # acceptance's flush makes 2 a job whatever else runs, so the fewest of three tries tells.
    for attempt in range(3):
        before = _wal_flushes()
        for n in range(jobs):
            answer = api.post(
                "/api/v1/jobs/sync/", {"kind": "hash", "input": {"data": f"{attempt}-{n}"}}, format="json"
            )
            assert answer.status_code == 200, answer.content
        counts.append(_wal_flushes() - before)
        if counts[-1] < jobs * 3 // 2:
            break
    assert min(counts) < jobs * 3 // 2, counts
    assert written(user)[2] == 0
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")  # the acceptance's own transaction alone went without the wait
        assert cursor.fetchone() == ("on",)

"""Issue 17 at small scale: the queries that must stay on indexes do, admin pages run a bounded number of
queries, purge and reconciler work in batches, export streams in one transaction that ends with the stream."""

import json
import logging
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from django.db import connection
from django.db.models import F
from django.test import override_settings
from django.test.client import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

from accounts.models import User
from credits.admin import RECENT_LEDGER_ENTRIES
from credits.models import CreditAccount, EntryType, LedgerEntry
from jobs.encryption import seal_input, seal_result
from jobs.export import FIRST_CHUNK, export_chunks, export_jsonl, export_query
from jobs.models import CallbackAttempt, CallbackStatus, Job, JobMode, JobStatus, JobTombstone, KindSettings
from jobs.selectors import job_list
from jobs.serializers import JobSerializer
from jobs.services import jobs_purge_expired, jobs_reconcile
from jobs.webhooks import webhooks_reconcile
from tests.conftest import TEST_VAR, auth_headers
from tests.job_helpers import kind_settings
from tests.waiting import wait_until

postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="query plans are PostgreSQL's: SQLite's planner is not what runs at ten million jobs",
)


def make_jobs(owner: User, n: int, *, age: timedelta = timedelta(0), **fields: Any) -> list[Job]:
    """n jobs of the owner, finished `age` ago, one second apart (bulk: thousands in a test)."""
    now = timezone.now() - age
    defaults = {
        "endpoint": "jobs.async",
        "kind": "hash",
        "mode": JobMode.ASYNC,
        "status": JobStatus.SUCCEEDED,
        "input": {"data": "x"},
        "result": {"digest": "d"},
        "cost": 1,
        "attempts": 1,
    }
    jobs = [
        Job(
            owner=owner,
            **{
                "created_at": now - timedelta(seconds=i),
                "finished_at": now - timedelta(seconds=i),
                **defaults,
                **fields,
            },
        )
        for i in range(n)
    ]
    created = Job.objects.bulk_create(jobs, batch_size=2000)
    # auto_now_add overrode created_at on insert: put the spread back (created when finished, in these tests)
    Job.objects.filter(owner=owner, finished_at__isnull=False).update(created_at=F("finished_at"))
    return created


def make_ledger(account: CreditAccount, n: int) -> None:
    LedgerEntry.objects.bulk_create(
        LedgerEntry(
            account=account,
            type=EntryType.CHARGE,
            amount=-1,
            balance_after=1000 - i,
            posting_key=f"test:{uuid.uuid4()}",
            job_id=uuid.uuid4(),
        )
        for i in range(n)
    )


@pytest.fixture
def staff_client(make_user: Callable[..., User]) -> Client:
    client = Client()
    client.force_login(make_user("root", is_staff=True, is_superuser=True))
    return client


# --- admin --------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_admin_pages_run_a_bounded_number_of_queries(
    staff_client: Client, make_user: Callable[..., User], django_assert_max_num_queries: Any
) -> None:
    users = [make_user(f"owner{i}") for i in range(5)]
    for owner in users:
        jobs = make_jobs(owner, 30, callback_url="http://127.0.0.1:9/hook", callback_status=CallbackStatus.DELIVERED)
        make_ledger(owner.credit_account, 30)
        CallbackAttempt.objects.bulk_create(CallbackAttempt(job=job, n=1, status_code=200) for job in jobs[:5])
    heavy = users[0]
    make_ledger(heavy.credit_account, RECENT_LEDGER_ENTRIES * 2)
    some_job = Job.objects.filter(owner=heavy).first()

    pages = [
        "/admin/jobs/job/",
        "/admin/jobs/job/?status__exact=succeeded&kind=hash",
        f"/admin/jobs/job/?q={heavy.username}",
        f"/admin/jobs/job/?q={some_job.pk}",
        f"/admin/jobs/job/?q={str(some_job.pk)[:8]}",
        "/admin/credits/ledgerentry/",
        f"/admin/credits/ledgerentry/?account__exact={heavy.pk}",
        f"/admin/credits/creditaccount/{heavy.pk}/change/",
        f"/admin/jobs/job/{some_job.pk}/change/",
    ]
    for page in pages:
        with django_assert_max_num_queries(12):
            response = staff_client.get(page)
        assert response.status_code == 200, page

    body = staff_client.get(f"/admin/jobs/job/?q={some_job.pk}").content.decode()
    assert "1 job" in body and str(some_job.pk) in body
    assert "150 jobs" in staff_client.get("/admin/jobs/job/").content.decode()
    assert "30 jobs" in staff_client.get(f"/admin/jobs/job/?q={users[1].username}").content.decode()
    kind_filter = staff_client.get("/admin/jobs/job/").content.decode()
    assert "?kind=stats" in kind_filter and "?kind=fetch" in kind_filter  # from the registry, not the rows

    account_page = staff_client.get(f"/admin/credits/creditaccount/{heavy.pk}/change/").content.decode()
    assert account_page.count("<td>charge</td>") == RECENT_LEDGER_ENTRIES  # bounded, not all 130 and more
    assert f"/admin/credits/ledgerentry/?account__exact={heavy.pk}" in account_page
    full = staff_client.get(f"/admin/credits/ledgerentry/?account__exact={heavy.pk}").content.decode()
    assert f"{LedgerEntry.objects.filter(account_id=heavy.pk).count()} ledger entries" in full


@postgres_only
@pytest.mark.django_db
def test_admin_count_is_postgres_estimate_above_the_exact_limit(
    staff_client: Client, user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("jobsite.admin.EXACT_COUNT_UP_TO", 10)
    make_jobs(user, 40)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE jobs_job")
    with CaptureQueriesContext(connection) as queries:
        assert staff_client.get("/admin/jobs/job/").status_code == 200
    assert not any("COUNT(" in q["sql"].upper() for q in queries.captured_queries)  # no count at all
    assert any(q["sql"].startswith("EXPLAIN") for q in queries.captured_queries)


# --- query plans (PostgreSQL) -----------------------------------------------------------------------


def _plans_of(queries: list[dict[str, str]], table: str) -> list[str]:
    """EXPLAIN of every captured SELECT on the table (a server-side cursor's too: `.iterator()`)."""
    plans = []
    with connection.cursor() as cursor:
        for query in queries:
            sql = re.sub(r"^DECLARE .*? CURSOR (WITH HOLD |WITHOUT HOLD )?FOR ", "", query["sql"])
            if sql.startswith("SELECT") and f'"{table}"' in sql:
                cursor.execute(f"EXPLAIN {sql}")
                plans.append("\n".join(row[0] for row in cursor.fetchall()))
    return plans


@postgres_only
@pytest.mark.django_db
@override_settings(RECONCILE_QUEUED_GRACE=0, RECONCILE_RUNNING_GRACE=0, CALLBACK_RECONCILE_GRACE=0)
def test_admin_reconciler_and_export_queries_use_indexes(staff_client: Client, user: User, other_user: User) -> None:
    # Old finished jobs in the thousands beside a few queued and running ones, as at scale; the export's owner
    # has a few of them, as every user but one.
    make_jobs(other_user, 2000, age=timedelta(days=10))
    make_jobs(user, 50)
    make_jobs(user, 3, status=JobStatus.QUEUED, finished_at=None)
    make_jobs(user, 3, status=JobStatus.RUNNING, finished_at=None, started_at=timezone.now())
    make_ledger(user.credit_account, 20)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
        # A few rows fit one page: the planner's honest answer is a sequential scan and a sort. With both
        # priced out, a plan still scanning sequentially or sorting everything means no index serves it.
        cursor.execute("SET enable_seqscan = off")
        cursor.execute("SET enable_sort = off")

    with CaptureQueriesContext(connection) as admin_list:
        staff_client.get("/admin/jobs/job/")
    with CaptureQueriesContext(connection) as ledger_list:
        staff_client.get("/admin/credits/ledgerentry/")
    with CaptureQueriesContext(connection) as reconcile:
        jobs_reconcile(now=timezone.now() - timedelta(days=1))  # nothing due: only the scans run
        webhooks_reconcile()

    admin_plans = _plans_of(admin_list.captured_queries, "jobs_job")
    assert any("job_created_id" in plan for plan in admin_plans), admin_plans
    ledger_plans = _plans_of(ledger_list.captured_queries, "credits_ledgerentry")
    assert any("ledger_created_id" in plan for plan in ledger_plans), ledger_plans
    reconcile_plans = "\n".join(_plans_of(reconcile.captured_queries, "jobs_job"))
    for index in ("job_status_created", "job_running_started", "job_callback_pending", "attempt_in_progress"):
        assert index in reconcile_plans, reconcile_plans
    export_plan = export_query(job_list(user=user, own_only=True)).explain()
    assert "job_owner_created" in export_plan, export_plan
    since = timezone.now() - timedelta(days=1)
    dated_plan = export_query(job_list(user=user, own_only=True, created_after=since)).explain()
    assert "job_owner_created" in dated_plan or "job_created_id" in dated_plan, dated_plan
    for plan in [*admin_plans, *ledger_plans, reconcile_plans, export_plan, dated_plan]:
        assert "Seq Scan on jobs_job" not in plan and "Seq Scan on credits_ledgerentry" not in plan, plan
    for plan in [*admin_plans, *ledger_plans, export_plan, dated_plan]:  # rows come in order: first row at once
        assert not re.search(r"(^|->  )Sort ", plan, re.M), plan


# --- purge and reconciler --------------------------------------------------------------------------


@pytest.mark.django_db
def test_purge_deletes_in_committed_batches_bounded_per_run_with_metric(
    user: User, caplog: pytest.LogCaptureFixture
) -> None:
    now = timezone.now()
    old = make_jobs(user, 25, age=timedelta(days=40), expires_at=now - timedelta(days=1), callback_url="http://h/")
    CallbackAttempt.objects.bulk_create(CallbackAttempt(job=job, n=1) for job in old)
    make_jobs(user, 3, age=timedelta(days=1), expires_at=now + timedelta(days=6))
    make_jobs(user, 2, age=timedelta(days=40), status=JobStatus.QUEUED, finished_at=None)
    purged_before = REGISTRY.get_sample_value("jobsite_jobs_purged_total") or 0

    with caplog.at_level(logging.INFO, logger="jobs.services"):
        first = jobs_purge_expired(batch_size=10, max_batches=2)  # bounded: two batches of ten, no more

    assert first["jobs_purged"] == 20 and Job.objects.count() == 10
    assert "purge: 20 expired job(s) deleted" in caplog.text
    assert jobs_purge_expired(batch_size=10, max_batches=2)["jobs_purged"] == 5  # the next run carries on
    assert Job.objects.count() == 5 and not CallbackAttempt.objects.exists()
    assert REGISTRY.get_sample_value("jobsite_jobs_purged_total") - purged_before == 25
    assert JobTombstone.objects.filter(owner=user).count() == 25
    assert jobs_purge_expired()["jobs_purged"] == 0  # a rerun finds nothing left


@postgres_only
@pytest.mark.django_db
def test_purge_walks_its_index_without_scanning_the_table(staff_client: Client, user: User, other_user: User) -> None:
    now = timezone.now()
    make_jobs(other_user, 2000, age=timedelta(days=1), expires_at=now + timedelta(days=6))
    make_jobs(user, 30, age=timedelta(days=10), expires_at=now - timedelta(days=3))
    make_jobs(user, 3, status=JobStatus.RUNNING, finished_at=None, started_at=now)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
        cursor.execute("SET enable_seqscan = off")  # as above: a few pages would honestly be scanned
        cursor.execute("SET enable_sort = off")
    with CaptureQueriesContext(connection) as purge:
        assert jobs_purge_expired(batch_size=10)["jobs_purged"] == 30
    plans = _plans_of(purge.captured_queries, "jobs_job")
    walks = [plan for plan in plans if "job_expires_id" in plan]
    assert walks, plans
    for plan in plans:
        assert "Seq Scan on jobs_job" not in plan and not re.search(r"(^|->  )Sort ", plan, re.M), plan
    make_jobs(user, 5, age=timedelta(days=10), expires_at=now - timedelta(days=3))
    with CaptureQueriesContext(connection) as admin_page:
        assert staff_client.get("/admin/jobs/job/?retention=awaiting_purge").status_code == 200
    admin_plans = _plans_of(admin_page.captured_queries, "jobs_job")
    assert any("job_expires_id" in plan for plan in admin_plans), admin_plans
    for plan in admin_plans:
        assert "Seq Scan on jobs_job" not in plan and not re.search(r"(^|->  )Sort ", plan, re.M), plan


@pytest.mark.django_db
@override_settings(RECONCILE_QUEUED_GRACE=0, RECONCILE_RUNNING_GRACE=0, JOB_MAX_ATTEMPTS=1)
def test_reconciler_walks_every_page_of_a_backlog(user: User, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("jobs.services.RECONCILE_BATCH", 2)
    long_ago = timezone.now() - timedelta(hours=1)
    make_jobs(user, 5, age=timedelta(hours=1), status=JobStatus.QUEUED, finished_at=None)
    make_jobs(user, 5, status=JobStatus.RUNNING, finished_at=None, started_at=long_ago)
    make_jobs(user, 5, age=timedelta(hours=1), status=JobStatus.CANCELING, finished_at=None, started_at=long_ago)
    assert jobs_reconcile() == {"requeued": 5, "failed": 5, "canceled": 5}


# --- API filters -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_created_range_filters_list_and_export(api: APIClient, user: User) -> None:
    make_jobs(user, 10, age=timedelta(days=10))
    recent = make_jobs(user, 4)
    since = (timezone.now() - timedelta(days=1)).isoformat()
    listed = api.get("/api/v1/jobs/", {"created_after": since}).json()["results"]
    assert {job["id"] for job in listed} == {str(job.pk) for job in recent}
    older = api.get("/api/v1/jobs/", {"created_before": since, "page_size": 100}).json()["results"]
    assert len(older) == 10
    exported = b"".join(api.get("/api/v1/jobs/export/", {"created_after": since}).streaming_content)
    assert len(exported.splitlines()) == 4
    empty = {"created_after": since, "created_before": since}  # a range that selects nothing is no error
    assert api.get("/api/v1/jobs/", empty).json()["results"] == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    "query",
    [{"created_after": "yesterday"}, {"created_before": "2026-13-01"}],
)
@pytest.mark.parametrize("path", ["/api/v1/jobs/", "/api/v1/jobs/export/"])
def test_bad_created_range_is_a_400_problem(api: APIClient, path: str, query: dict[str, str]) -> None:
    response = api.get(path, query)
    assert response.status_code == 400
    assert response["Content-Type"].startswith("application/problem+json")
    assert {error["field"] for error in response.json()["errors"]} & {"created_after", "created_before"}


# --- export ------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_export_rows_read_exactly_like_the_api(user: User) -> None:
    jobs = make_jobs(user, 3, callback_url="http://127.0.0.1:9/h", callback_status=CallbackStatus.FAILED)
    CallbackAttempt.objects.create(job=jobs[0], n=2, error="timeout")  # out of order: the export sorts by n
    CallbackAttempt.objects.create(job=jobs[0], n=1, status_code=500, error="boom", duration_ms=3)
    make_jobs(user, 2, status=JobStatus.FAILED, error_code="upstream", error_message="no", result=None)
    make_jobs(
        user,
        1,
        status=JobStatus.QUEUED,
        finished_at=None,
        attempt_log=[{"n": 1, "at": "2026-01-01T00:00:00+00:00", "code": "x", "message": "", "callers_fault": False}],
    )
    # The database writes the times: whole seconds drop the fraction, a half second keeps all six digits
    whole, half = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), datetime(2026, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)
    Job.objects.filter(pk=jobs[1].pk).update(created_at=whole, started_at=half, finished_at=whole)
    Job.objects.filter(pk=jobs[2].pk).update(input={"data": 'café ✓ "quoted"\n'})
    # What newer fields add: a priority, progress (an integer fraction is served as a float), event subscriptions
    progress = {"fraction": 1, "message": "done", "updated_at": "2026-01-02T03:04:05.5+00:00"}
    Job.objects.filter(pk=jobs[0].pk).update(
        priority="high", progress=progress, webhook_events="job.started,job.progress"
    )

    # Encryption at rest: a sealed input field and result (masked and opened as the API does), and a field sealed
    # under an earlier setting of a kind that no longer lists it (masked all the same)
    kind_settings("stats", encrypt_fields="data,result")
    sealing = KindSettings.objects.get(kind="stats")
    make_jobs(
        user, 1, kind="stats", input=seal_input(sealing, {"data": "secret"}), result=seal_result(sealing, {"n": 6})
    )
    make_jobs(user, 1, input=seal_input(sealing, {"data": "old secret", "iterations": 3}))

    jobs_qs = job_list(user=user, own_only=True)
    exported = [row for chunk in export_chunks(jobs_qs, chunk_size=4) for row in chunk]
    assert {"data": "***"} in [row["input"] for row in exported] and {"n": 6} in [row["result"] for row in exported]
    assert {"data": "***", "iterations": 3} in [row["input"] for row in exported]
    expected = JobSerializer(jobs_qs.prefetch_related("callback_attempts"), many=True).data
    assert json.loads(json.dumps(exported)) == json.loads(json.dumps(expected))
    # Byte for byte what json.dumps writes of the API's representation (compact, ASCII)
    jsonl = "".join(export_jsonl(export_chunks(jobs_qs, chunk_size=4)))
    assert jsonl == "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in expected)


@pytest.mark.django_db(transaction=True)
def test_export_reads_a_server_side_cursor_inside_its_own_transaction(user: User) -> None:
    make_jobs(user, 50)
    chunks = export_chunks(job_list(user=user, own_only=True), chunk_size=30)
    assert not connection.in_atomic_block
    assert len(next(chunks)) == FIRST_CHUNK
    assert connection.in_atomic_block  # held while the stream is
    if connection.vendor == "postgresql":  # a named cursor WITHOUT HOLD: rows as read, no temporary file
        assert _open_cursors() == [(False,)]
    chunks.close()  # what the WSGI server does when the client leaves
    assert not connection.in_atomic_block
    if connection.vendor == "postgresql":
        assert _open_cursors() == []


def _open_cursors() -> list[tuple[bool]]:
    """This session's server-side cursors (the query asking is not one), whether each is WITH HOLD."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT is_holdable FROM pg_cursors")
        return cursor.fetchall()


@pytest.mark.django_db(transaction=True)
def test_export_streams_over_http_and_stops_when_the_client_leaves(server_url: str, user: User) -> None:
    make_jobs(user, 30_000, callback_url="http://127.0.0.1:9/h", callback_status=CallbackStatus.DELIVERED)
    headers = auth_headers(user)

    with httpx.stream("GET", f"{server_url}/api/v1/jobs/export/", headers=headers, timeout=60) as response:
        assert response.status_code == 200
        first = json.loads(next(response.iter_lines()))
        assert first["callback"]["status"] == "delivered"
    # The client is gone with ~29 000 rows unsent: the server notices on its next write and closes the stream

    server_log = TEST_VAR / "test-gunicorn.log"
    wait_until(lambda: "export stopped after" in server_log.read_text(), timeout=30)
    if connection.vendor == "postgresql":
        wait_until(lambda: _busy_backends() == 0, timeout=10)  # no transaction nor cursor left open


def _busy_backends() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND state IN ('active', 'idle in transaction')"
        )
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_export_over_http_is_complete_in_both_formats(server_url: str, user: User, other_user: User) -> None:
    make_jobs(user, 2500)
    make_jobs(other_user, 5)
    headers = auth_headers(user)
    lines = httpx.get(f"{server_url}/api/v1/jobs/export/", headers=headers, timeout=60).text.splitlines()
    assert len(lines) == 2500 and len({json.loads(line)["id"] for line in lines}) == 2500
    csv_text = httpx.get(f"{server_url}/api/v1/jobs/export/?format=csv", headers=headers, timeout=60).text
    assert len(csv_text.splitlines()) == 2501

"""jobsite.db's statements written once per shape: they write what the ORM would, on SQLite and PostgreSQL."""

import pytest
from django.db import connection
from django.utils import timezone

from accounts.models import User
from jobs.models import IdempotencyRecord, IdempotencyStatus, Job, JobMode, JobStatus
from jobsite.db import insert_new, insert_row, insert_unless_conflict, update_where

pytestmark = pytest.mark.django_db


def _job(owner: User, **fields: object) -> Job:
    return Job(owner=owner, endpoint="jobs.async", kind="hash", mode=JobMode.ASYNC, input={"data": "x"}, **fields)


def test_insert_new_writes_every_field_as_save_would(user: User) -> None:
    job = _job(user, status=JobStatus.RUNNING, attempts=2, attempt_log=[{"n": 1}], client_ip="127.0.0.1")
    insert_new(job)
    assert not job._state.adding
    stored = Job.objects.get(pk=job.pk)
    assert (stored.owner_id, stored.status, stored.attempts, stored.attempt_log, stored.client_ip) == (
        user.pk,
        JobStatus.RUNNING,
        2,
        [{"n": 1}],
        "127.0.0.1",
    )
    assert stored.input == {"data": "x"} and stored.result is None and stored.created_at == job.created_at


def test_insert_row_leaves_out_null_columns_writes_empty_values_as_literals_and_the_rest_as_parameters(
    user: User,
) -> None:
    job = _job(
        user, status=JobStatus.RUNNING, attempts=1, attempt_log=[{"n": 1}], client_ip="127.0.0.1", queue_wait_ms=0
    )
    into, row, values = insert_row(job)
    assert '"result"' not in into and '"started_at"' not in into and '"client_ip"' in into
    assert None not in values and "" not in values and False not in values
    with connection.cursor() as cursor:
        cursor.execute(f"{into} VALUES ({row})", values)
    stored = Job.objects.get(pk=job.pk)
    assert (stored.status, stored.attempts, stored.attempt_log, stored.client_ip) == (
        JobStatus.RUNNING,
        1,
        [{"n": 1}],
        "127.0.0.1",
    )
    assert (stored.error_code, stored.cached, stored.depends_on, stored.trace_context) == ("", False, [], {})
    assert (stored.queue_wait_ms, stored.holds_slot) == (0, job.holds_slot)
    assert stored.result is None and stored.started_at is None and stored.created_at == job.created_at
    assert Job.objects.filter(pk=job.pk, result__isnull=True).exists()  # SQL NULL, as save() writes None


def test_insert_unless_conflict_sets_the_auto_key_and_reports_a_conflict(user: User) -> None:
    now = timezone.now()
    fields = {"fingerprint": "f", "created_at": now, "locked_until": now, "expires_at": now}
    first = IdempotencyRecord(owner=user, key="k", **fields)
    assert insert_unless_conflict(first, unique_fields=["owner", "key"])
    assert first.pk == IdempotencyRecord.objects.get().pk
    assert not insert_unless_conflict(IdempotencyRecord(owner=user, key="k", **fields), unique_fields=["owner", "key"])
    assert IdempotencyRecord.objects.count() == 1


def test_update_where_matches_every_condition_and_counts_rows(user: User, other_user: User) -> None:
    mine, theirs = _job(user, attempts=1), _job(other_user, attempts=1)
    insert_new(mine)
    insert_new(theirs)
    finished = timezone.now()
    outcome = {"status": JobStatus.SUCCEEDED, "result": {"output_hash": "h"}, "finished_at": finished}
    assert update_where(Job, where={"id": mine.pk, "attempts": 2}, values=outcome) == 0
    assert update_where(Job, where={"id": mine.pk, "owner_id": user.pk, "attempts": 1}, values=outcome) == 1
    mine.refresh_from_db()
    theirs.refresh_from_db()
    assert (mine.status, mine.result, mine.finished_at) == (JobStatus.SUCCEEDED, {"output_hash": "h"}, finished)
    assert (theirs.status, theirs.result) == (JobStatus.QUEUED, None)
    # None in a JSON column is SQL NULL, as QuerySet.update writes it.
    assert update_where(Job, where={"id": mine.pk}, values={"result": None}) == 1
    assert Job.objects.filter(pk=mine.pk, result__isnull=True).exists()


def test_update_where_writes_a_foreign_key_by_its_attname(user: User) -> None:
    job = _job(user)
    insert_new(job)
    now = timezone.now()
    record = IdempotencyRecord(owner=user, key="k", fingerprint="f", created_at=now, locked_until=now, expires_at=now)
    insert_unless_conflict(record, unique_fields=["owner", "key"])
    in_flight = {"owner_id": user.pk, "key": "k", "status": IdempotencyStatus.IN_FLIGHT}
    assert update_where(IdempotencyRecord, where=in_flight, values={"job_id": job.pk}) == 1
    assert IdempotencyRecord.objects.get().job_id == job.pk


@pytest.mark.parametrize("where", [{}, {"id": None}])
def test_update_where_refuses_a_missing_or_null_condition(user: User, where: dict[str, object]) -> None:
    insert_new(_job(user))
    with pytest.raises(ValueError):
        update_where(Job, where=where, values={"status": JobStatus.FAILED})
    assert Job.objects.get().status == JobStatus.QUEUED

"""A batch's progress, kept by its jobs' own transactions: counted final, completed once, started once.

Completion is seen without counting jobs: the transaction that makes a job final adds one to the batch's
counter of that outcome with one UPDATE ... RETURNING, and the one that reaches the total completes the batch
(a conditional UPDATE, so only once) and queues its `batch.completed` webhook after commit. The reconciler
(jobs.batches.batches_reconcile) completes a batch whose counters drifted from its jobs.
"""

from datetime import datetime
from functools import partial
from uuid import UUID

from django.db import connection, transaction
from django.db.models import Case, F, Value, When
from django.utils import timezone

from jobs import queues
from jobs.models import Batch, BatchStatus, CallbackStatus, JobStatus

FINAL_COUNTERS = {JobStatus.SUCCEEDED: "succeeded", JobStatus.FAILED: "failed", JobStatus.CANCELED: "canceled"}
"""The Batch counter each final job status adds to."""

BATCH_WEBHOOK_RETRIES = 3
"""Retries of a failed batch.completed delivery, as a kind's default `callback_retries` (5 s, 5 min, 30 min)."""

_BATCHES = connection.ops.quote_name(Batch._meta.db_table)


def batch_job_finished(*, batch_id: UUID, status: str) -> None:
    """Count a job of the batch that just became final; the last one completes the batch. Call in that transaction."""
    column = connection.ops.quote_name(FINAL_COUNTERS[JobStatus(status)])
    sql = f"UPDATE {_BATCHES} SET {column} = {column} + 1 WHERE id = %s RETURNING total, succeeded + failed + canceled"
    with connection.cursor() as cursor:
        cursor.execute(sql, [Batch._meta.pk.get_db_prep_value(batch_id, connection)])
        row = cursor.fetchone()
    if row is not None and row[1] >= row[0]:
        batch_complete(batch_id=batch_id)


def batch_job_reopened(*, batch_id: UUID) -> None:
    """A failed batch job is queued again (staff requeue): it no longer counts as failed. A completed batch stays
    completed (its webhook went out); the job's new outcome is counted when it comes."""
    Batch.objects.filter(pk=batch_id, failed__gt=0).update(failed=F("failed") - 1)


def batch_job_started(*, batch_id: UUID, started_at: datetime | None) -> None:
    """A worker claimed a job of the batch: the first claim marks the batch in progress (one indexed no-op after)."""
    Batch.objects.filter(pk=batch_id, in_progress_at__isnull=True).update(in_progress_at=started_at)


def batch_complete(*, batch_id: UUID) -> bool:
    """Mark the batch completed (canceled, if its owner canceled it) once; its webhook is queued after commit."""
    completed = Batch.objects.filter(pk=batch_id, completed_at__isnull=True).update(
        completed_at=timezone.now(),
        status=Case(
            When(canceled_at__isnull=False, then=Value(BatchStatus.CANCELED)), default=Value(BatchStatus.COMPLETED)
        ),
    )
    if completed and Batch.objects.filter(pk=batch_id, callback_status=CallbackStatus.PENDING).exists():
        transaction.on_commit(
            partial(queues.enqueue_batch_webhook_or_defer, batch_id, retries_left=BATCH_WEBHOOK_RETRIES)
        )
    return bool(completed)

"""Writes of jobs: submission, execution, cancellation and reconciliation."""

import logging
from datetime import datetime, timedelta
from functools import partial
from itertools import chain
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from jobs import metrics, queues
from jobs.batch_progress import batch_job_reopened
from jobs.concurrency import concurrency_release, concurrency_retake
from jobs.execution import attempt_log_with, job_finish, job_on_final
from jobs.kind_settings import get_kind_settings
from jobs.models import FINAL_STATUSES, Batch, Job, JobMode, JobStatus
from jobs.selectors import job_get
from jobsite.db import keyset_batches
from jobsite.errors import (
    NotCancellable,
    NotFound,
)

logger = logging.getLogger(__name__)


@transaction.atomic
def job_cancel(*, user: User, job_id: UUID) -> Job:
    """Cancel a queued job of the user's; running and finished jobs cannot be canceled."""
    job = job_get(user=user, job_id=job_id)
    if job is None:
        raise NotFound("No such job.")
    if not job_cancel_queued(job):
        raise NotCancellable(f"The job is {job.status}; only queued jobs can be canceled.")
    return job


def job_cancel_queued(job: Job) -> bool:
    """Cancel the job if it is still queued (refunded, its slot freed, dropped from RQ after commit); whether it was.

    Call in a transaction: the cancel, the refund and the slot commit together.
    """
    canceled = Job.objects.filter(pk=job.pk, status=JobStatus.QUEUED).update(
        status=JobStatus.CANCELED, finished_at=timezone.now()
    )
    if not canceled:
        return False
    job.refresh_from_db()
    concurrency_release(job)
    job_on_final(job)
    transaction.on_commit(partial(queues.discard_job, job.pk))
    return True


def job_requeue(*, job_id: UUID) -> bool:
    """Staff action: run a failed async job again from scratch; returns whether it was requeued."""
    job = Job.objects.filter(pk=job_id, mode=JobMode.ASYNC, status=JobStatus.FAILED).first()
    if job is None:
        return False
    with transaction.atomic():
        requeued = Job.objects.filter(pk=job.pk, status=JobStatus.FAILED).update(
            status=JobStatus.QUEUED,
            attempts=0,
            result=None,
            error_code="",
            error_message="",
            started_at=None,
            finished_at=None,
            run_ms=None,
            queue_wait_ms=None,
            queued_at=timezone.now(),
        )
        if requeued:
            concurrency_retake(job)
            if job.batch_id is not None:
                batch_job_reopened(batch_id=job.batch_id)
            time_limit = get_kind_settings(job.kind).time_limit
            queues.enqueue_job_on_commit(job.pk, time_limit=time_limit, trace_context=job.trace_context)
    return bool(requeued)


def _job_requeue_or_fail(job: Job, *, reason: str, now: datetime) -> str:
    """A running job whose worker is gone: log the lost attempt, run it again while attempts remain, else fail it."""
    if job.mode == JobMode.ASYNC and job.attempts < settings.JOB_MAX_ATTEMPTS:
        log = attempt_log_with(job, code="worker_lost", message=reason)
        requeued = Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING, attempts=job.attempts).update(
            status=JobStatus.QUEUED, started_at=None, queued_at=now, attempt_log=log
        )
        if requeued:
            concurrency_retake(job)
            time_limit = get_kind_settings(job.kind).time_limit
            queues.enqueue_job(job.pk, time_limit=time_limit, trace_context=job.trace_context)
            return "requeued"
        return "skipped"
    failed = job_finish(job, status=JobStatus.FAILED, error_code="worker_lost", error_message=reason)
    return "failed" if failed else "skipped"


RECONCILE_BATCH = 500
"""Jobs the reconciler reads per query (keyset pages on its indexes): memory stays flat in a backlog."""


def jobs_reconcile(*, now: datetime | None = None) -> dict[str, int]:
    """Rescue jobs that Redis or a dead worker lost; safe to run anywhere, any number of times."""
    now = now or timezone.now()
    report = {"requeued": 0, "failed": 0}
    queued_cutoff = now - timedelta(seconds=settings.RECONCILE_QUEUED_GRACE)
    stale_queued = Job.objects.filter(status=JobStatus.QUEUED, mode=JobMode.ASYNC, created_at__lt=queued_cutoff)
    stale_queued = stale_queued.only("id", "kind", "trace_context", "created_at")
    for job in chain.from_iterable(keyset_batches(stale_queued, field="created_at", size=RECONCILE_BATCH)):
        if not queues.is_pending_in_rq(job.pk):
            time_limit = get_kind_settings(job.kind).time_limit
            queues.enqueue_job(job.pk, time_limit=time_limit, trace_context=job.trace_context)
            report["requeued"] += 1
    grace = timedelta(seconds=settings.RECONCILE_RUNNING_GRACE)
    overdue = Job.objects.filter(status=JobStatus.RUNNING, started_at__lt=now - grace)
    for job in chain.from_iterable(keyset_batches(overdue, field="started_at", size=RECONCILE_BATCH)):
        deadline = job.started_at + timedelta(seconds=get_kind_settings(job.kind).time_limit) + grace
        if now < deadline:
            continue
        reason = f"no result {int((now - job.started_at).total_seconds())} s after start (attempt {job.attempts})"
        outcome = _job_requeue_or_fail(job, reason=reason, now=now)
        if outcome in report:
            report[outcome] += 1
    if any(report.values()):
        logger.warning("reconciler: %s", report)
    return report


PURGE_BATCH = 1000
"""Jobs deleted per transaction by jobs_purge: about 0.2 s of locks and WAL each on a busy 2-core machine."""


def jobs_purge(*, finished_before: datetime, batch_size: int = PURGE_BATCH) -> int:
    """Delete final jobs that finished before the cutoff, one short transaction per batch of ids.

    Resumable: every batch commits on its own, so an interrupted purge keeps what it deleted and a rerun
    carries on with the rest. Returns how many jobs went.
    """
    doomed = Job.objects.filter(status__in=FINAL_STATUSES, finished_at__lt=finished_before)
    deleted = 0
    for batch in keyset_batches(doomed.values("pk", "finished_at"), field="finished_at", size=batch_size):
        with transaction.atomic():
            # Conditions again: a failed job requeued since the batch was read is no longer doomed.
            _, per_model = doomed.filter(pk__in=[row["pk"] for row in batch]).only("pk").delete()
        purged = per_model.get(Job._meta.label, 0)
        deleted += purged
        metrics.JOBS_PURGED.inc(purged)
        logger.info("purge: %d job(s) deleted so far, up to finished_at %s", deleted, batch[-1]["finished_at"])
    # Batches completed before the cutoff: every job of theirs finished before it too, and is gone by now.
    _, per_model = Batch.objects.filter(completed_at__lt=finished_before).delete()
    if batches := per_model.get(Batch._meta.label, 0):
        logger.info("purge: %d batch(es) deleted", batches)
    return deleted

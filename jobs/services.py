"""Writes of jobs: submission, execution, cancellation and reconciliation."""

import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from itertools import chain
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone

from accounts.models import User
from jobs import metrics, queues
from jobs.batch_progress import batch_job_reopened
from jobs.concurrency import concurrency_release, concurrency_retake
from jobs.dependencies import waiting_jobs_settleable
from jobs.events import job_events_clear
from jobs.execution import attempt_log_with, job_finish, job_held_settle, job_on_final
from jobs.holding import Settled
from jobs.kind_settings import get_kind_settings, job_expiry
from jobs.models import (
    FINAL_STATUSES,
    HELD_STATUSES,
    Batch,
    CallbackStatus,
    IdempotencyRecord,
    Job,
    JobMode,
    JobStatus,
    JobTombstone,
)
from jobs.progress import job_requeued_announce
from jobs.selectors import job_get_or_raise, jobs_awaiting_purge
from jobs.stop import stop_request
from jobsite.db import keyset_batches
from jobsite.errors import NotCancellable

logger = logging.getLogger(__name__)


STOP_FLAG_MARGIN = 60
"""Seconds a stop flag outlives the run's time limit and the reconciler's grace: it is never gone too early."""


@transaction.atomic
def job_cancel(*, user: User, job_id: UUID) -> Job:
    """Cancel a job of the user's: a queued or held (scheduled, waiting) one at once (refunded), a running async
    one by asking its worker to stop (canceling, then canceled at its next check; not refunded: the work was
    under way).

    Canceling again is harmless (the flag is raised again); a sync job (its caller holds the request) and a
    final job cannot be canceled. Each step is one conditional UPDATE, so a cancel racing the worker's claim,
    a release or a finish leaves exactly one final state.
    """
    job = job_get_or_raise(user=user, job_id=job_id)
    if job_cancel_unstarted(job):
        return job
    asking = Job.objects.filter(pk=job.pk, mode=JobMode.ASYNC, status__in=[JobStatus.RUNNING, JobStatus.CANCELING])
    if asking.update(status=JobStatus.CANCELING):
        job.refresh_from_db()
        ttl = get_kind_settings(job.kind).time_limit + settings.RECONCILE_RUNNING_GRACE + STOP_FLAG_MARGIN
        transaction.on_commit(partial(stop_request, job.pk, ttl=ttl))
        return job
    job.refresh_from_db()
    if job.mode == JobMode.SYNC:
        raise NotCancellable("A sync job runs within its request and cannot be canceled.")
    raise NotCancellable(f"The job is {job.status}: only queued, held and running jobs can be canceled.")


def job_cancel_unstarted(job: Job) -> bool:
    """Cancel the job if it has not started, queued or held (scheduled, waiting): refunded in full, its slot (if
    any) freed, dropped from RQ after commit; whether it was. Call in a transaction: all of it commits together."""
    now = timezone.now()
    # The status read first, then queued: a held job may have been released since the read.
    candidates = (job.status, JobStatus.QUEUED) if job.status in HELD_STATUSES else (JobStatus.QUEUED,)
    for status in candidates:
        if Job.objects.filter(pk=job.pk, status=status).update(
            status=JobStatus.CANCELED, finished_at=now, expires_at=job_expiry(job.kind, now)
        ):
            job.refresh_from_db()
            concurrency_release(job)  # a held job took no slot (holds_slot is false): nothing to give back
            if status == JobStatus.QUEUED:
                transaction.on_commit(partial(queues.discard_job, job))
            elif status == JobStatus.SCHEDULED:
                transaction.on_commit(partial(queues.discard_release, job.pk))
            job_on_final(job)
            return True
    return False


def job_requeue(*, job_id: UUID) -> bool:
    """Staff action: run a failed async job again from scratch; returns whether it was requeued."""
    job = Job.objects.filter(pk=job_id, mode=JobMode.ASYNC, status=JobStatus.FAILED).first()
    if job is None:
        return False
    kind_settings = get_kind_settings(job.kind)
    job.pool = queues.job_pool(kind_settings)  # the kind's pool now: a staff edit since applies
    with transaction.atomic():
        requeued = Job.objects.filter(pk=job.pk, status=JobStatus.FAILED).update(
            status=JobStatus.QUEUED,
            pool=job.pool,
            attempts=0,
            result=None,
            error_code="",
            error_message="",
            started_at=None,
            finished_at=None,
            expires_at=None,
            run_ms=None,
            queue_wait_ms=None,
            queued_at=timezone.now(),
            holds_slot=True,
            progress=None,
        )
        if requeued:
            concurrency_retake(job)
            transaction.on_commit(partial(job_events_clear, job.pk))  # its old final event would end streams
            if job.batch_id is not None:
                batch_job_reopened(batch_id=job.batch_id)
            queues.enqueue_job_on_commit(job, time_limit=kind_settings.time_limit)
    return bool(requeued)


def _job_enqueue_again(job: Job) -> None:
    """A queued job RQ lost: enqueue it on its kind's pool now (a staff edit since applies), at its priority."""
    kind_settings = get_kind_settings(job.kind)
    pool = queues.job_pool(kind_settings)
    if job.pool != pool:
        job.pool = pool
        Job.objects.filter(pk=job.pk, status=JobStatus.QUEUED).update(pool=pool)
    queues.enqueue_job(job, time_limit=kind_settings.time_limit)


def _job_requeue_or_fail(job: Job, *, reason: str, now: datetime) -> str:
    """A running job whose worker is gone: log the lost attempt, run it again while attempts remain, else fail it."""
    if job.mode == JobMode.ASYNC and job.attempts < settings.JOB_MAX_ATTEMPTS:
        log = attempt_log_with(job, code="worker_lost", message=reason)
        kind_settings = get_kind_settings(job.kind)
        job.pool = queues.job_pool(kind_settings)
        requeued = Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING, attempts=job.attempts).update(
            status=JobStatus.QUEUED, started_at=None, queued_at=now, attempt_log=log, pool=job.pool, progress=None
        )
        if requeued:  # still active: it keeps the slot it holds (taking another would count it twice)
            job_requeued_announce(job)
            queues.enqueue_job(job, time_limit=kind_settings.time_limit)
            return "requeued"
        return "skipped"
    failed = job_finish(job, status=JobStatus.FAILED, error_code="worker_lost", error_message=reason)
    return "failed" if failed else "skipped"


RECONCILE_BATCH = 500
"""Jobs the reconciler reads per query (keyset pages on its indexes): memory stays flat in a backlog."""


def jobs_reconcile(*, now: datetime | None = None) -> dict[str, int]:
    """Rescue jobs that Redis or a dead worker lost; safe to run anywhere, any number of times."""
    now = now or timezone.now()
    report = {"requeued": 0, "failed": 0, "canceled": 0}
    queued_cutoff = now - timedelta(seconds=settings.RECONCILE_QUEUED_GRACE)
    stale_queued = Job.objects.filter(status=JobStatus.QUEUED, mode=JobMode.ASYNC, created_at__lt=queued_cutoff)
    stale_queued = stale_queued.only(
        "id", "kind", "trace_context", "created_at", "queued_at", "owner_id", "priority", "pool"
    )
    for page in keyset_batches(stale_queued, field="created_at", size=RECONCILE_BATCH):
        # Back on the queue (a held job released, a retry) within the grace: its RQ job is on its way.
        due = [job for job in page if not (job.queued_at and job.queued_at >= queued_cutoff)]
        pending = queues.pending_in_rq(due)
        for job in due:
            if job.pk not in pending:
                _job_enqueue_again(job)
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
    # Canceling jobs are few: the (status, created_at) index finds them; their deadline is checked here.
    canceling = Job.objects.filter(status=JobStatus.CANCELING, created_at__lt=now - grace)
    for job in chain.from_iterable(keyset_batches(canceling, field="created_at", size=RECONCILE_BATCH)):
        started_at = job.started_at or job.created_at
        if now < started_at + timedelta(seconds=get_kind_settings(job.kind).time_limit) + grace:
            continue
        reason = f"no result {int((now - started_at).total_seconds())} s after start (attempt {job.attempts})"
        if job_finish(job, status=JobStatus.CANCELED, error_code="worker_lost", error_message=reason):
            report["canceled"] += 1
    if any(report.values()):
        logger.warning("reconciler: %s", report)
    return report


def held_jobs_reconcile(*, now: datetime | None = None) -> dict[str, int]:
    """Settle held jobs whose release Redis lost or a crash cut short; safe anywhere, any number of times.

    Scheduled jobs due for longer than RECONCILE_QUEUED_GRACE (RQ's scheduler releases them within 2 s), and
    waiting jobs whose dependencies are all final or include a failure they do not allow.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.RECONCILE_QUEUED_GRACE)
    due = Job.objects.filter(status=JobStatus.SCHEDULED, run_at__lt=cutoff).only("id", "run_at")
    settleable = waiting_jobs_settleable().only("id", "created_at")
    outcomes = Counter(
        job_held_settle(job_id=job.pk, retry_when_full=False)  # the next pass is the retry
        for job in chain(
            chain.from_iterable(keyset_batches(due, field="run_at", size=RECONCILE_BATCH)),
            chain.from_iterable(keyset_batches(settleable, field="created_at", size=RECONCILE_BATCH)),
        )
    )
    report = {"released": outcomes[Settled.RELEASED], "dependency_failed": outcomes[Settled.FAILED]}
    if any(report.values()):
        logger.warning("reconciler: held jobs %s", report)
    return report


PURGE_BATCH = 1000
"""Rows deleted per transaction by the purge: about 0.2 s of locks and WAL each on a busy 2-core machine."""


def _purge_in_batches(
    rows: QuerySet[Any], *, field: str, batch_size: int, max_batches: int, delete: Callable[[list[Any]], int]
) -> int:
    """Walk `rows` (values with pk and `field`) on their index and delete each batch in its own transaction.

    At most `max_batches` per call: one scheduled run stays short however large the backlog, and the next
    run carries on (keyset order, so deleted rows are never walked again). Returns how many rows went.
    """
    deleted = 0
    for n, batch in enumerate(keyset_batches(rows, field=field, size=batch_size), start=1):
        with transaction.atomic():
            deleted += delete([row["pk"] for row in batch])
        if n >= max_batches:
            break
    return deleted


def _jobs_delete(ids: list[UUID], *, due: QuerySet[Job], now: datetime) -> int:
    """Delete these jobs if still `due` (a requeue may have revived one), each leaving a tombstone; their
    webhook attempts go by cascade, their idempotency records with them."""
    doomed = list(due.filter(pk__in=ids).select_for_update().values_list("pk", "owner_id", "expires_at"))
    JobTombstone.objects.bulk_create(
        [JobTombstone(id=pk, owner_id=owner, expired_at=min(expiry or now, now)) for pk, owner, expiry in doomed],
        ignore_conflicts=True,
    )
    gone = [pk for pk, _, _ in doomed]
    IdempotencyRecord.objects.filter(job_id__in=gone).delete()
    _, per_model = Job.objects.filter(pk__in=gone).delete()
    purged = per_model.get(Job._meta.label, 0)
    metrics.JOBS_PURGED.inc(purged)
    return purged


def _batches_purge_emptied(bounds: dict[str, int]) -> int:
    """Completed batches whose jobs are all purged (a batch's results are its jobs'): bounded like the jobs."""
    emptied = Batch.objects.filter(completed_at__isnull=False).exclude(Exists(Job.objects.filter(batch=OuterRef("pk"))))
    return _purge_in_batches(
        emptied.values("pk"),
        field="pk",  # on the primary key: no index orders completed batches, and their order does not matter
        delete=lambda ids: emptied.filter(pk__in=ids).delete()[1].get(Batch._meta.label, 0),
        **bounds,
    )


def _purge_bounds(batch_size: int, max_batches: int | None) -> dict[str, int]:
    return {"batch_size": batch_size, "max_batches": max_batches or settings.PURGE_MAX_BATCHES}


def jobs_purge_expired(
    *, now: datetime | None = None, batch_size: int = PURGE_BATCH, max_batches: int | None = None
) -> dict[str, int]:
    """The retention purge (rq cron, `manage.py purge_jobs`): expired jobs with their inputs, results, webhook
    attempts and idempotency records, then expired idempotency keys and old tombstones.

    Each kind of row in batches of `batch_size`, each its own transaction, at most `max_batches` batches
    (default PURGE_MAX_BATCHES) each per run: resumable, and a run is bounded whatever the backlog.
    """
    now = now or timezone.now()
    bounds = _purge_bounds(batch_size, max_batches)
    due = jobs_awaiting_purge(now=now)
    expired_jobs = due.values("pk", "expires_at")
    jobs = _purge_in_batches(expired_jobs, field="expires_at", delete=partial(_jobs_delete, due=due, now=now), **bounds)
    if jobs:
        logger.info("purge: %d expired job(s) deleted", jobs)
    expired_keys = IdempotencyRecord.objects.filter(expires_at__lte=now)
    keys = _purge_in_batches(
        expired_keys.values("pk", "expires_at"),
        field="expires_at",
        delete=lambda ids: expired_keys.filter(pk__in=ids).delete()[0],
        **bounds,
    )
    old_tombstones = JobTombstone.objects.filter(purged_at__lte=now - timedelta(days=settings.TOMBSTONE_RETENTION_DAYS))
    tombstones = _purge_in_batches(
        old_tombstones.values("pk", "purged_at"),
        field="purged_at",
        delete=lambda ids: old_tombstones.filter(pk__in=ids).delete()[0],
        **bounds,
    )
    batches = _batches_purge_emptied(bounds)
    return {
        "jobs_purged": jobs,
        "batches_purged": batches,
        "idempotency_keys_purged": keys,
        "tombstones_purged": tombstones,
    }


def jobs_purge_finished_before(
    *, finished_before: datetime, batch_size: int = PURGE_BATCH, max_batches: int | None = None
) -> int:
    """Staff's early purge (`purge_jobs --older-than DAYS`): final jobs finished before the cutoff, expired or
    not, as the retention purge deletes them (tombstones, attempts, idempotency records; bounded batches)."""
    due = Job.objects.filter(status__in=FINAL_STATUSES, finished_at__lt=finished_before).exclude(
        callback_status=CallbackStatus.PENDING
    )
    finished = due.values("pk", "finished_at")
    delete = partial(_jobs_delete, due=due, now=timezone.now())
    bounds = _purge_bounds(batch_size, max_batches)
    jobs = _purge_in_batches(finished, field="finished_at", delete=delete, **bounds)
    if batches := _batches_purge_emptied(bounds):
        logger.info("purge: %d batch(es) deleted", batches)
    return jobs

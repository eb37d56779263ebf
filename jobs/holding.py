"""Held jobs: accepted and charged now, queued once a condition holds (issues 19 and 20).

- `scheduled`: its run_at is ahead. RQ's scheduler (workers run --with-scheduler) runs jobs.tasks.release_job
  at run_at rounded up to the second (RQ keeps whole seconds and looks every second), at the front of the jobs
  queue: the job is queued 0 to 2 s after run_at, never before, then waits its turn like a job submitted then.
- `waiting`: some job it depends on is not final. The dependency that finishes settles it (jobs.execution
  calls job_dependents_settle after the final state commits, for jobs flagged `has_dependents`): queued once
  all succeeded, failed `dependency_failed` (refunded) once one failed or was canceled, unless it allows that.
  A waiting job whose run_at is still ahead when its dependencies are done becomes `scheduled`.

A release is one conditional UPDATE held -> queued that takes the job's concurrency slot in the same
transaction: caps count a job from its release, never while it is held. When the cap is full the job stays
held and is tried again CONCURRENCY_CAP_RETRY_AFTER seconds later. The database stays the source of truth:
the reconciler (jobs.services.held_jobs_reconcile) settles a due scheduled job, or a waiting job whose
dependencies allow it, whose release Redis lost or a crash interrupted.
"""

import logging
from collections.abc import Callable
from contextvars import ContextVar
from datetime import datetime, timedelta
from enum import StrEnum
from functools import partial
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.policies import get_endpoint_policy
from jobs import metrics, queues
from jobs.concurrency import concurrency_admit
from jobs.dependencies import DEPENDENCY_FAILED, DependencyState, dependency_check, waiting_dependents
from jobs.kind_settings import get_kind_settings, job_expiry
from jobs.models import HELD_STATUSES, Job, JobStatus
from jobsite.errors import RateLimited

logger = logging.getLogger(__name__)

Finalize = Callable[[Job], None]
"""What follows a final state (jobs.execution.job_on_final), passed in: execution imports this module."""


class Settled(StrEnum):
    RELEASED = "released"
    """Queued now."""
    DEFERRED = "deferred"
    """Due, but its concurrency cap is full: held, tried again shortly."""
    SCHEDULED = "scheduled"
    """Its run_at is ahead."""
    WAITING = "waiting"
    """Some dependency is not final."""
    FAILED = "failed"
    """A dependency failed: failed dependency_failed, refunded."""
    SKIPPED = "skipped"
    """Not held (any more): another hand moved it."""


def job_settle(*, job_id: UUID, finalize: Finalize, retry_when_full: bool = True) -> Settled:
    """Move a held job as far as its conditions allow: fail, keep, schedule or queue it.

    Safe to call any number of times from anywhere: every move is a conditional UPDATE from the status read.
    `retry_when_full`: schedule another try when the cap is full (the reconciler, which comes back anyway, does not).
    """
    job = Job.objects.select_related("owner").filter(pk=job_id, status__in=HELD_STATUSES).first()
    if job is None:
        return Settled.SKIPPED
    now = timezone.now()
    if job.status == JobStatus.WAITING:
        check = dependency_check(job)
        if check.state == DependencyState.PENDING:
            return Settled.WAITING
        if check.state == DependencyState.FAILED:
            return _job_fail_dependency(job, reason=check.reason, finalize=finalize, now=now)
        if job.run_at is not None and job.run_at > now:
            return _job_schedule(job, run_at=job.run_at)
    elif job.run_at is not None and job.run_at > now:
        queues.enqueue_release_or_defer(job.pk, at=job.run_at, first=False)  # woken early (clocks differ)
        return Settled.SCHEDULED
    return _job_release(job, now=now, retry_when_full=retry_when_full)


def _job_release(job: Job, *, now: datetime, retry_when_full: bool) -> Settled:
    """Held -> queued with its concurrency slot, enqueued after commit; a full cap leaves it held."""
    policy = get_endpoint_policy(job.endpoint)
    kind_settings = get_kind_settings(job.kind)
    pool = queues.job_pool(kind_settings)  # its kind's pool as the settings say at release
    try:
        with transaction.atomic():
            holds_slot = concurrency_admit(user=job.owner, policy=policy)
            released = Job.objects.filter(pk=job.pk, status=job.status)
            if not released.update(status=JobStatus.QUEUED, queued_at=now, pool=pool, holds_slot=holds_slot):
                transaction.set_rollback(True)  # another hand moved it: give the slot just taken back
                return Settled.SKIPPED
            job.pool, job.holds_slot = pool, holds_slot
            queues.enqueue_job_on_commit(job, time_limit=kind_settings.time_limit)
    except RateLimited:
        if retry_when_full:
            retry_at = now + timedelta(seconds=settings.CONCURRENCY_CAP_RETRY_AFTER)
            queues.enqueue_release_or_defer(job.pk, at=retry_at, first=False)
        return Settled.DEFERRED
    metrics.JOBS_RELEASED.labels(held=job.status).inc()
    if job.status == JobStatus.SCHEDULED and job.run_at is not None:
        metrics.JOB_RELEASE_LATENESS.observe(max(0.0, (now - job.run_at).total_seconds()))
    return Settled.RELEASED


def _job_schedule(job: Job, *, run_at: datetime) -> Settled:
    """Waiting -> scheduled: its dependencies are done, its run_at is ahead."""
    with transaction.atomic():
        if not Job.objects.filter(pk=job.pk, status=JobStatus.WAITING).update(status=JobStatus.SCHEDULED):
            return Settled.SKIPPED
        transaction.on_commit(partial(queues.enqueue_release_or_defer, job.pk, at=run_at))
    return Settled.SCHEDULED


def _job_fail_dependency(job: Job, *, reason: str, finalize: Finalize, now: datetime) -> Settled:
    """Waiting -> failed dependency_failed; it never ran and held no slot, so it is refunded in full."""
    with transaction.atomic():
        failed = Job.objects.filter(pk=job.pk, status=JobStatus.WAITING).update(
            status=JobStatus.FAILED,
            error_code=DEPENDENCY_FAILED,
            error_message=reason,
            finished_at=now,
            expires_at=job_expiry(job.kind, now),
        )
        if not failed:
            return Settled.SKIPPED
        job.refresh_from_db()  # the row as this transaction wrote it, with a has_dependents set since the read
        finalize(job)
    return Settled.FAILED


_SETTLING: ContextVar[list[UUID] | None] = ContextVar("settling_dependents", default=None)
"""The finished jobs whose dependents the running job_dependents_settle still has to look at."""


def job_dependents_settle(*, job_id: UUID, finalize: Finalize) -> None:
    """A job with dependents is final: settle each waiting dependent, and theirs in turn when they fail.

    A loop over a work list, not recursion: a dependent failed on the way (its finalize calls back here
    after its commit) adds itself to the list, so a chain of any length fails transitively.
    """
    pending = _SETTLING.get()
    if pending is not None:
        pending.append(job_id)
        return
    pending = [job_id]
    token = _SETTLING.set(pending)
    try:
        while pending:
            for dependent_id in waiting_dependents(pending.pop()):
                job_settle(job_id=dependent_id, finalize=finalize)
    finally:
        _SETTLING.reset(token)

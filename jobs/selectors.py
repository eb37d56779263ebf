"""Reads of jobs: ownership is checked here, once."""

from datetime import datetime
from typing import Any
from uuid import UUID

from django.db.models import Count, QuerySet
from django.utils import timezone

from accounts.models import User
from jobs.events import held_request, job_wait_final
from jobs.models import Batch, CallbackStatus, Job, JobStatus, JobTombstone
from jobsite.errors import JobExpired, NotFound


def job_list(
    *,
    user: User,
    mode: str = "",
    status: str = "",
    kind: str = "",
    own_only: bool = False,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> QuerySet[Job]:
    """The user's own jobs (staff: everyone's, unless own_only), newest first, optionally filtered.

    Every filter is served by an index: (owner, [status|kind|mode,] created_at), or (created_at, id) for staff.
    """
    jobs = Job.objects.all() if user.is_staff and not own_only else Job.objects.filter(owner=user)
    if mode:
        jobs = jobs.filter(mode=mode)
    if status:
        jobs = jobs.filter(status=status)
    if kind:
        jobs = jobs.filter(kind=kind)
    return _created_between(jobs, created_after, created_before)


def _created_between(jobs: QuerySet[Job], after: datetime | None, before: datetime | None) -> QuerySet[Job]:
    if after:
        jobs = jobs.filter(created_at__gt=after)
    if before:
        jobs = jobs.filter(created_at__lt=before)
    return jobs


def webhook_delivery_list(
    *,
    user: User,
    status: str = "",
    job_id: UUID | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> QuerySet[Job]:
    """The user's own webhook deliveries (one per job with a callback_url) with their attempts, newest first.

    Served by the partial index job_owner_deliveries (owner, created_at where a webhook exists).
    """
    jobs = Job.objects.filter(owner=user).exclude(callback_status=CallbackStatus.NONE)
    if status:
        jobs = jobs.filter(callback_status=status)
    if job_id:
        jobs = jobs.filter(pk=job_id)
    return _created_between(jobs, created_after, created_before).prefetch_related("callback_attempts")


def job_get(*, user: User, job_id: UUID) -> Job | None:
    """One job if the user may see it; another user's job is indistinguishable from a missing one."""
    jobs = Job.objects.all() if user.is_staff else Job.objects.filter(owner=user)
    return jobs.prefetch_related("callback_attempts").filter(pk=job_id).first()


def job_get_or_raise(*, user: User, job_id: UUID) -> Job:
    """One job the user may see; NotFound, or JobExpired (410) for the owner (and staff) of a purged one."""
    job = job_get(user=user, job_id=job_id)
    if job is None:
        raise job_missing(user=user, job_id=job_id)
    return job


def job_missing(*, user: User, job_id: UUID) -> NotFound | JobExpired:
    """Why the user finds no job by this id: JobExpired for the owner (and staff) of a purged one, else NotFound.

    Read only when a lookup misses, so reads of live jobs cost nothing more; another user's purged job stays
    as invisible as their live ones.
    """
    tombstones = JobTombstone.objects.all() if user.is_staff else JobTombstone.objects.filter(owner=user)
    tombstone = tombstones.filter(pk=job_id).first()
    if tombstone is not None:
        return JobExpired(f"The job expired at {tombstone.expired_at.isoformat()} and was deleted with its results.")
    return NotFound("No such job.")


def jobs_awaiting_purge(*, now: datetime | None = None) -> QuerySet[Job]:
    """The jobs the next purge runs will delete: expired, on the purge's own index (job_expires_id), unless
    their webhook is still being delivered (its retries end within CALLBACK_MAX_AGE; the purge waits)."""
    return Job.objects.filter(expires_at__lte=now or timezone.now()).exclude(callback_status=CallbackStatus.PENDING)


def job_await(*, user: User, job: Job, seconds: int) -> tuple[Job, bool]:
    """The job, final if it became final within `seconds` (a held request: Prefer: wait), and whether the wait
    was applied: False when this process holds all the requests it may (the job is answered as it is).

    One XREAD BLOCK per BLOCK_MAX_SECONDS on the job's final stream, then (woken) the job read again: 2 queries.
    """
    if job.is_final:
        return job, True
    with held_request() as held:
        if not held:
            return job, False
        if job_wait_final(job.pk, seconds=seconds):
            job = job_get(user=user, job_id=job.pk) or job
    return job, True


def job_stats_for_owner(*, owner_id: int) -> dict[str, Any]:
    jobs = Job.objects.filter(owner_id=owner_id)
    by_status = dict(jobs.values_list("status").annotate(n=Count("id")).order_by())
    by_kind = dict(jobs.values_list("kind").annotate(n=Count("id")).order_by())
    return {"total": sum(by_status.values()), "by_status": by_status, "by_kind": by_kind}


def batch_get(*, user: User, batch_id: UUID) -> Batch | None:
    """One of the user's batches; another user's (staff included: a batch is its owner's) is not there."""
    return Batch.objects.filter(pk=batch_id, owner=user).first()


def batch_list(*, user: User) -> QuerySet[Batch]:
    """The user's batches, newest first."""
    return Batch.objects.filter(owner=user)


def batch_active_counts(batches: list[Batch]) -> dict[UUID, dict[str, int]]:
    """Queued and running jobs per batch, for the batches not yet complete: one query (index job_batch_active)."""
    open_ids = [batch.pk for batch in batches if batch.finished < batch.total]
    if not open_ids:
        return {}
    active = (
        Job.objects.filter(batch_id__in=open_ids, status__in=[JobStatus.QUEUED, JobStatus.RUNNING])
        .values_list("batch_id", "status")
        .annotate(n=Count("id"))
        .order_by()
    )
    counts: dict[UUID, dict[str, int]] = {}
    for batch_id, status, n in active:
        counts.setdefault(batch_id, {})[status] = n
    return counts


def batch_jobs(*, batch: Batch) -> QuerySet[Job]:
    """The batch's jobs, in request order, with their delivery attempts."""
    return Job.objects.filter(batch=batch).prefetch_related("callback_attempts")

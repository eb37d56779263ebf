"""Writes of jobs: submission, execution, cancellation and reconciliation."""

import logging
import time
from datetime import datetime, timedelta
from functools import partial
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from redis.exceptions import RedisError
from rq.timeouts import JobTimeoutException

from accounts.models import User
from jobs import queues, ssrf
from jobs.kinds import KINDS, KindError, RunContext
from jobs.models import FINAL_STATUSES, CallbackStatus, EndpointPolicy, Job, JobMode, JobStatus
from jobs.policies import get_kind_settings
from jobs.selectors import job_get
from jobsite.errors import CallbackUrlForbidden, JobFailed, NotCancellable, NotFound, QueueFull, ServiceUnavailable

logger = logging.getLogger(__name__)


def _elapsed_ms(start: datetime, end: datetime) -> int:
    return max(0, int((end - start).total_seconds() * 1000))


def job_submit(
    *,
    user: User,
    policy: EndpointPolicy,
    kind_name: str,
    params: dict[str, Any],
    mode: str,
    callback_url: str = "",
) -> Job:
    """Accept a validated job: run it now (sync) or record and queue it (async)."""
    if callback_url:
        try:
            ssrf.check_url(callback_url, allow_unresolved=True)
        except ssrf.UrlForbidden as exc:
            raise CallbackUrlForbidden(exc.reason) from None
    if mode == JobMode.SYNC:
        return _job_run_sync(user=user, policy=policy, kind_name=kind_name, params=params)
    return _job_enqueue(user=user, policy=policy, kind_name=kind_name, params=params, callback_url=callback_url)


def _job_run_sync(*, user: User, policy: EndpointPolicy, kind_name: str, params: dict[str, Any]) -> Job:
    kind_settings = get_kind_settings(kind_name)
    now = timezone.now()
    job = Job.objects.create(
        owner=user,
        endpoint=policy.name,
        kind=kind_name,
        mode=JobMode.SYNC,
        status=JobStatus.RUNNING,
        input=params,
        cost=kind_settings.cost,
        attempts=1,
        started_at=now,
        queue_wait_ms=0,
    )
    _job_run(job)
    job.refresh_from_db()
    if job.status == JobStatus.FAILED:
        raise JobFailed(
            job.error_message, job_id=str(job.id), error={"code": job.error_code, "message": job.error_message}
        )
    return job


def _job_enqueue(
    *, user: User, policy: EndpointPolicy, kind_name: str, params: dict[str, Any], callback_url: str
) -> Job:
    try:
        depth = queues.queue_depth()
    except RedisError:
        raise ServiceUnavailable("The job queue is unreachable; try again shortly.") from None
    if depth >= policy.queue_max_depth:
        raise QueueFull(
            f"The queue holds {depth} jobs (cap {policy.queue_max_depth}).",
            headers={"Retry-After": str(settings.QUEUE_FULL_RETRY_AFTER)},
            queue_depth=depth,
            queue_capacity=policy.queue_max_depth,
        )
    kind_settings = get_kind_settings(kind_name)
    with transaction.atomic():
        job = Job.objects.create(
            owner=user,
            endpoint=policy.name,
            kind=kind_name,
            mode=JobMode.ASYNC,
            input=params,
            cost=kind_settings.cost,
            callback_url=callback_url,
            callback_status=CallbackStatus.PENDING if callback_url else CallbackStatus.NONE,
        )
        transaction.on_commit(partial(queues.enqueue_job_or_defer, job.id, time_limit=kind_settings.time_limit))
    return job


def _job_claim(job_id: UUID) -> Job | None:
    """Conditionally move queued -> running; only one worker can win, a canceled job is skipped."""
    now = timezone.now()
    claimed = Job.objects.filter(pk=job_id, status=JobStatus.QUEUED).update(
        status=JobStatus.RUNNING, started_at=now, attempts=F("attempts") + 1
    )
    if not claimed:
        return None
    job = Job.objects.get(pk=job_id)
    job.queue_wait_ms = _elapsed_ms(job.created_at, now)
    Job.objects.filter(pk=job_id).update(queue_wait_ms=job.queue_wait_ms)
    return job


def _job_finish(job: Job, *, status: str, result: Any = None, error_code: str = "", error_message: str = "") -> bool:
    """Record the outcome, only if this attempt still owns the job (a reaped job is not overwritten)."""
    now = timezone.now()
    finished = Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING, attempts=job.attempts).update(
        status=status,
        result=result,
        error_code=error_code,
        error_message=error_message[:2000],
        finished_at=now,
        run_ms=_elapsed_ms(job.started_at, now),
    )
    if finished:
        job.refresh_from_db()
        _job_on_final(job)
    return bool(finished)


def _job_on_final(job: Job) -> None:
    """Everything that follows a job reaching a final state."""
    logger.info("job %s %s", job.id, job.status)
    if job.callback_status == CallbackStatus.PENDING:
        retries = get_kind_settings(job.kind).callback_retries
        transaction.on_commit(partial(queues.enqueue_callback_or_defer, job.pk, n=1, retries_left=retries))


def _job_run(job: Job) -> None:
    """Run a claimed job's kind and record its outcome; never raises for the kind's own failures."""
    kind = KINDS[job.kind]
    started = time.perf_counter()
    try:
        result = kind.run(job.input, RunContext(owner_id=job.owner_id, job_id=str(job.id)))
    except KindError as exc:
        _job_finish(job, status=JobStatus.FAILED, error_code=exc.code, error_message=exc.message)
    except JobTimeoutException:
        limit = get_kind_settings(job.kind).time_limit
        _job_finish(job, status=JobStatus.FAILED, error_code="time_limit", error_message=f"ran over {limit} s")
    except Exception:
        logger.exception("job %s crashed after %.3f s", job.id, time.perf_counter() - started)
        _job_finish(job, status=JobStatus.FAILED, error_code="internal_error", error_message="the job crashed")
    else:
        _job_finish(job, status=JobStatus.SUCCEEDED, result=result)


def job_execute(*, job_id: UUID | str) -> None:
    """Worker entry: claim the job and run it; a job already claimed or canceled is left alone."""
    job = _job_claim(UUID(str(job_id)))
    if job is not None:
        _job_run(job)


@transaction.atomic
def job_cancel(*, user: User, job_id: UUID) -> Job:
    """Cancel a queued job of the user's; running and finished jobs cannot be canceled."""
    job = job_get(user=user, job_id=job_id)
    if job is None:
        raise NotFound("No such job.")
    canceled = Job.objects.filter(pk=job.pk, status=JobStatus.QUEUED).update(
        status=JobStatus.CANCELED, finished_at=timezone.now()
    )
    if not canceled:
        raise NotCancellable(f"The job is {job.status}; only queued jobs can be canceled.")
    job.refresh_from_db()
    _job_on_final(job)
    transaction.on_commit(partial(queues.discard_job, job.pk))
    return job


def job_requeue(*, job_id: UUID) -> bool:
    """Staff action: run a failed async job again from scratch; returns whether it was requeued."""
    job = Job.objects.filter(pk=job_id, mode=JobMode.ASYNC, status=JobStatus.FAILED).first()
    if job is None:
        return False
    with transaction.atomic():
        requeued = Job.objects.filter(pk=job.pk, status=JobStatus.FAILED).update(
            status=JobStatus.QUEUED, attempts=0, result=None, error_code="", error_message="",
            started_at=None, finished_at=None, run_ms=None, queue_wait_ms=None,
        )  # fmt: skip
        if requeued:
            time_limit = get_kind_settings(job.kind).time_limit
            transaction.on_commit(partial(queues.enqueue_job_or_defer, job.pk, time_limit=time_limit))
    return bool(requeued)


def _job_requeue_or_fail(job: Job, *, reason: str) -> str:
    """A running job whose worker is gone: run it again while attempts remain, else fail it."""
    if job.mode == JobMode.ASYNC and job.attempts < settings.JOB_MAX_ATTEMPTS:
        requeued = Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING, attempts=job.attempts).update(
            status=JobStatus.QUEUED, started_at=None
        )
        if requeued:
            queues.enqueue_job(job.pk, time_limit=get_kind_settings(job.kind).time_limit)
            return "requeued"
        return "skipped"
    failed = _job_finish(job, status=JobStatus.FAILED, error_code="worker_lost", error_message=reason)
    return "failed" if failed else "skipped"


def jobs_reconcile(*, now: datetime | None = None) -> dict[str, int]:
    """Rescue jobs that Redis or a dead worker lost; safe to run anywhere, any number of times."""
    now = now or timezone.now()
    report = {"requeued": 0, "failed": 0}
    queued_cutoff = now - timedelta(seconds=settings.RECONCILE_QUEUED_GRACE)
    stale_queued = Job.objects.filter(status=JobStatus.QUEUED, mode=JobMode.ASYNC, created_at__lt=queued_cutoff)
    for job in stale_queued.only("id", "kind").iterator():
        if not queues.is_pending_in_rq(job.pk):
            queues.enqueue_job(job.pk, time_limit=get_kind_settings(job.kind).time_limit)
            report["requeued"] += 1
    grace = timedelta(seconds=settings.RECONCILE_RUNNING_GRACE)
    for job in Job.objects.filter(status=JobStatus.RUNNING, started_at__lt=now - grace).iterator():
        deadline = job.started_at + timedelta(seconds=get_kind_settings(job.kind).time_limit) + grace
        if now < deadline:
            continue
        reason = f"no result {int((now - job.started_at).total_seconds())} s after start (attempt {job.attempts})"
        outcome = _job_requeue_or_fail(job, reason=reason)
        if outcome in report:
            report[outcome] += 1
    if any(report.values()):
        logger.warning("reconciler: %s", report)
    return report


@transaction.atomic
def jobs_purge(*, finished_before: datetime) -> int:
    """Delete final jobs that finished before the cutoff; returns how many jobs went."""
    _, per_model = Job.objects.filter(status__in=FINAL_STATUSES, finished_at__lt=finished_before).delete()
    return per_model.get(Job._meta.label, 0)

"""Submission of a job, top to bottom: after the gate (accounts.api.EndpointView: authentication, policy
checks, rate limits) and validation, a job request passes the SSRF check, the circuit breaker and the result
cache, then is admitted by the concurrency caps, charged and recorded at once (one statement on PostgreSQL:
jobs.acceptance; one transaction elsewhere), and run now (sync) or queued (async)."""

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from redis.exceptions import RedisError

from accounts.models import PRIORITY_RANK, EndpointPolicy, Priority, User
from jobs import metrics, queues, ssrf
from jobs.acceptance import job_accept
from jobs.billing import job_charge
from jobs.cache import cache_get
from jobs.circuit import CircuitState, circuit_acquire, circuit_target
from jobs.concurrency import concurrency_admit, concurrency_capped
from jobs.deadline import Deadline
from jobs.dependencies import job_dependencies_add
from jobs.encryption import seal_input, seal_result
from jobs.execution import job_held_settle, job_on_final, job_run
from jobs.holding import Settled
from jobs.idempotency import idempotency_bind_job, idempotency_claim_first, idempotency_key_held
from jobs.kind_settings import get_kind_settings, job_expiry
from jobs.kinds import KINDS
from jobs.models import CallbackStatus, Job, JobMode, JobStatus, KindSettings
from jobs.uploads import upload_discard, upload_input_take
from jobsite.db import insert_new
from jobsite.errors import (
    CallbackUrlForbidden,
    CircuitOpen,
    InvalidInput,
    JobFailed,
    PriorityNotAllowed,
    QueueFull,
    ServiceUnavailable,
)
from jobsite.tracing import get_tracer, inject_context

tracer = get_tracer()


def job_submit(
    *,
    user: User,
    policy: EndpointPolicy,
    kind_name: str,
    params: dict[str, Any],
    mode: str,
    callback_url: str = "",
    priority: str | None = None,
    webhook_events: list[str] | None = None,
    free: bool = False,
    client_ip: str | None = None,
    run_at: datetime | None = None,
    depends_on: Sequence[UUID] = (),
    allow_dependency_failure: bool = False,
) -> Job:
    """Accept a validated job: answer it from the cache, run it now (sync), record and queue it (async), or
    record and hold it (async with a run_at ahead or dependencies: jobs.holding queues it later).

    `priority` (async) is served in the kind's pool by jobs.pools' rule, up to the policy's max_priority;
    not asked: normal, or the policy's max if that is lower.
    `free` jobs cost nothing: anonymous callers of the compatible routes have no credits to spend.
    `client_ip` is recorded on the job (anonymous callers see only the jobs submitted from their address).
    `webhook_events` (job.started, job.progress) are sent to callback_url besides the final webhook.
    An input naming an `upload_id` is given the upload's text, and the upload is deleted once the job is accepted
    (a refused submission leaves it for another try); the job holds its own copy, so the cache keys on content.
    """
    params, upload_id = upload_input_take(user=user, kind=KINDS[kind_name], params=params)
    priority = priority_admit(policy, priority)
    callback_url_check(callback_url)
    hold = _hold_status(policy=policy, run_at=run_at, depends_on=depends_on)
    kind_settings = get_kind_settings(kind_name)
    target = circuit_target(kind_settings, params)
    # A held job meets the breaker when it runs: the target's state now says nothing about then.
    if hold is None and circuit_acquire(kind_settings, target, take_trial=False) == CircuitState.OPEN:
        retry_after = max(1, kind_settings.circuit_recovery)
        raise CircuitOpen(
            f"Jobs of kind {kind_name} to {target} fail fast while it keeps failing; nothing was charged.",
            headers={"Retry-After": str(retry_after)},
            limit={"circuit": kind_name, "target": target, "recovery": kind_settings.circuit_recovery},
            retry_after=retry_after,
        )
    request = _JobRequest(
        user=user,
        policy=policy,
        kind_settings=kind_settings,
        params=params,
        mode=mode,
        callback_url=callback_url,
        priority=priority,
        webhook_events=",".join(webhook_events or ()),
        cost=0 if free else kind_settings.cost,
        client_ip=client_ip,
        run_at=run_at,
        depends_on=tuple(depends_on),
        allow_dependency_failure=allow_dependency_failure,
    )
    try:
        if hold is not None:
            job = _job_hold(request, status=hold)
        elif (cached := cache_get(kind_settings, params, owner_id=user.pk)) is not None:
            job = _job_record_cached(request, result=cached)
        elif mode == JobMode.SYNC:
            job = _job_run_sync(request)
        else:
            job = _job_enqueue(request)
    except JobFailed:  # a sync job recorded and charged, then failed: it was accepted all the same
        _upload_release(user=user, upload_id=upload_id)
        raise
    _upload_release(user=user, upload_id=upload_id)
    metrics.JOBS_SUBMITTED.labels(kind=kind_name, mode=mode).inc()
    return job


def _upload_release(*, user: User, upload_id: UUID | None) -> None:
    if upload_id is not None:
        upload_discard(user=user, upload_id=upload_id)


def callback_url_check(callback_url: str) -> None:
    """The SSRF guard on a callback URL at submission (400 callback_url_forbidden); delivery checks it again."""
    if not callback_url:
        return
    try:
        ssrf.check_url(callback_url, allow_unresolved=True)
    except ssrf.UrlForbidden as exc:
        raise CallbackUrlForbidden(exc.reason) from None


def priority_admit(policy: EndpointPolicy, asked: str | None = None) -> str:
    """The priority a submission runs at: what it asked, up to the policy's max_priority (above: 403
    priority_not_allowed); not asked: normal, or the policy's max if that is lower."""
    ceiling = Priority(policy.max_priority)
    priority = asked or min(Priority.NORMAL, ceiling, key=PRIORITY_RANK.__getitem__)
    if PRIORITY_RANK[Priority(priority)] > PRIORITY_RANK[ceiling]:
        raise PriorityNotAllowed(
            f"Priority {priority} is above what {policy.name} allows ({policy.max_priority}); nothing was charged.",
            limit={"policy": policy.name, "max_priority": policy.max_priority},
        )
    return priority


def queue_admit(policy: EndpointPolicy, *, pool: str) -> None:
    """Back-pressure before an async acknowledgement: wait a little for room in the pool's queue, else 503 queue_full."""
    capacity = min(policy.queue_max_depth, settings.QUEUE_ADMISSION_DEPTHS[pool])
    try:
        depth = queues.queue_wait_for_room(pool=pool, limit=capacity, wait=settings.QUEUE_ADMISSION_WAIT)
    except RedisError:
        raise ServiceUnavailable("The job queue is unreachable; try again shortly.") from None
    if depth is not None:
        raise QueueFull(
            f"The {pool} queue holds {depth} jobs (cap {capacity}).",
            headers={"Retry-After": str(settings.QUEUE_FULL_RETRY_AFTER)},
            limit={"policy": policy.name, "queue_max_depth": policy.queue_max_depth},
            queue_depth=depth,
            queue_capacity=capacity,
            retry_after=settings.QUEUE_FULL_RETRY_AFTER,
        )


@dataclass(frozen=True)
class _JobRequest:
    """A validated submission on its way to becoming a Job."""

    user: User
    policy: EndpointPolicy
    kind_settings: KindSettings
    params: dict[str, Any]
    mode: str
    callback_url: str
    priority: str
    cost: int
    client_ip: str | None = None
    run_at: datetime | None = None
    depends_on: tuple[UUID, ...] = ()
    allow_dependency_failure: bool = False
    webhook_events: str = ""
    """Comma list, as stored."""


def _hold_status(*, policy: EndpointPolicy, run_at: datetime | None, depends_on: Sequence[UUID]) -> str | None:
    """The status a submission is held in (None: not held); a run_at beyond the policy's horizon is refused."""
    now = timezone.now()
    if run_at is not None and run_at > now + timedelta(seconds=policy.max_schedule_ahead):
        latest = (now + timedelta(seconds=policy.max_schedule_ahead)).isoformat(timespec="seconds")
        message = f"At most {policy.max_schedule_ahead} s ahead (policy {policy.name}): no later than {latest}."
        raise InvalidInput([{"field": "run_at", "message": message}])
    if depends_on:
        return JobStatus.WAITING
    return JobStatus.SCHEDULED if run_at is not None and run_at > now else None


def _job_create(request: _JobRequest, **state: Any) -> Job:
    """Record an accepted job (_job_new) in the caller's transaction (_job_insert); the caller has made the request
    claim its key before that transaction (idempotency_claim_first)."""
    job = _job_new(request, **state)
    _job_insert(job)
    return job


def _job_insert(job: Job) -> None:
    """INSERT the job; the request's Idempotency-Key (if any) is tied to it in the same transaction."""
    insert_new(job)
    idempotency_bind_job(job)


def _job_admit(request: _JobRequest, **state: Any) -> Job:
    """Record an accepted job that runs now or is queued, with what must commit before it runs: its concurrency
    slot, its charge and the request's Idempotency-Key. One statement where jobs.acceptance can, else one transaction."""
    job = _job_new(request, cost=request.cost, holds_slot=concurrency_capped(request.policy), **state)
    if _nothing_to_account(request):
        insert_new(job)  # the INSERT alone is atomic (autocommit)
    elif not job_accept(job, policy=request.policy):
        with transaction.atomic():
            concurrency_admit(user=request.user, policy=request.policy)
            _job_insert(job)
            job_charge(job)
    return job


def _job_new(request: _JobRequest, **state: Any) -> Job:
    """An accepted job, not saved yet: input sealed, trace context and callback status set; `state` says the rest."""
    job = Job(
        owner=request.user,
        endpoint=request.policy.name,
        kind=request.kind_settings.kind,
        mode=request.mode,
        input=seal_input(request.kind_settings, request.params),
        callback_url=request.callback_url,
        webhook_events=request.webhook_events,
        callback_status=CallbackStatus.PENDING if request.callback_url else CallbackStatus.NONE,
        trace_context=inject_context(),
        client_ip=request.client_ip,
        run_at=request.run_at,
        depends_on=[str(pk) for pk in request.depends_on],
        allow_dependency_failure=request.allow_dependency_failure,
        priority=request.priority,
        **state,
    )
    job.attempts_known_empty()  # a new job: its response reads no attempts
    return job


def _job_record_cached(request: _JobRequest, *, result: Any) -> Job:
    """A cache hit: the job is final at once, costs nothing, and still goes through job_on_final."""
    idempotency_claim_first()
    now = timezone.now()
    with transaction.atomic():
        job = _job_create(
            request,
            status=JobStatus.SUCCEEDED,
            result=seal_result(request.kind_settings, result),
            cost=0,
            cached=True,
            created_at=now,
            started_at=now,
            finished_at=now,
            expires_at=job_expiry(request.kind_settings.kind, now),
            queue_wait_ms=0,
            run_ms=0,
            holds_slot=False,
        )
        job_on_final(job)
    return job


def _job_run_sync(request: _JobRequest) -> Job:
    # One deadline for the whole request, retries included: it bounds how long a web thread is held.
    deadline = Deadline.after(request.kind_settings.time_limit)
    now = timezone.now()  # created and started at once: started_at never precedes created_at
    running = {"status": JobStatus.RUNNING, "attempts": 1, "created_at": now, "started_at": now, "queue_wait_ms": 0}
    if _nothing_to_account(request):
        # Recorded once, with its outcome (job_finish inserts it): no charge, slot or key needs the row first.
        job = _job_new(request, cost=0, holds_slot=False, **running)
    else:
        job = _job_admit(request, **running)
    while (delay := job_run(job, deadline=deadline)) is not None:
        time.sleep(delay)
        if not job._state.adding:
            job.refresh_from_db()
    if not job.is_final:
        job.refresh_from_db()  # another hand (the reconciler) finished it: read what it wrote
    if job.status == JobStatus.FAILED:
        raise JobFailed(
            job.error_message, job_id=str(job.id), error={"code": job.error_code, "message": job.error_message}
        )
    return job


def _nothing_to_account(request: _JobRequest) -> bool:
    """A free job of an uncapped endpoint without an Idempotency-Key: nothing must commit before it runs."""
    return request.cost == 0 and not concurrency_capped(request.policy) and not idempotency_key_held()


def _job_enqueue(request: _JobRequest) -> Job:
    policy = request.policy
    pool = queues.job_pool(request.kind_settings)
    queue_admit(policy, pool=pool)
    attributes = {"job.kind": request.kind_settings.kind}
    with tracer.start_as_current_span("job.enqueue", attributes=attributes) as span:
        job = _job_admit(request, pool=pool)
        span.set_attribute("job.id", str(job.id))
        queues.enqueue_job_on_commit(job, time_limit=request.kind_settings.time_limit)
    return job


def _job_hold(request: _JobRequest, *, status: str) -> Job:
    """Record and charge a job that is not queued yet: no queue room or concurrency slot needed until its release.

    Its dependencies are locked before the charge, in the order a finishing dependency takes them (its row,
    then its owner's balance for a refund), so the two cannot deadlock.
    """
    idempotency_claim_first()
    with transaction.atomic():
        job = _job_create(request, status=status, cost=request.cost, holds_slot=False)  # a slot only at release
        job_dependencies_add(job=job, depends_on=request.depends_on)
        job_charge(job)
        if status == JobStatus.SCHEDULED and request.run_at is not None:
            transaction.on_commit(partial(queues.enqueue_release_or_defer, job.pk, at=request.run_at))
    if status == JobStatus.WAITING and job_held_settle(job_id=job.pk) != Settled.WAITING:
        # Its dependencies were done already: show what settling made of it.
        job.refresh_from_db(fields=["status", "error_code", "error_message", "queued_at", "finished_at"])
    return job

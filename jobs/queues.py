"""RQ queues Jobsite uses, and enqueueing that never loses a job: the database row comes first."""

import logging
import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache, partial
from typing import Any, cast
from uuid import UUID

import django_rq
from django.conf import settings
from django.db import transaction
from redis import Redis
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.job import JobStatus as RQJobStatus

from jobs.models import Job, KindSettings
from jobs.pools import Lane, PoolQueue, is_pool, room_key
from jobsite.after_response import run_once_sent
from jobsite.redis import redis_key
from jobsite.sizing import DEFAULT_POOL
from jobsite.tracing import TRACE_META_KEY

logger = logging.getLogger(__name__)

JOBS_QUEUE = DEFAULT_POOL
"""The default pool's queue: async jobs of every kind not routed to another pool."""

CALLBACKS_QUEUE = "callbacks"
"""Webhook deliveries, apart so that slow receivers never hold up job workers."""

MAINTENANCE_QUEUE = "maintenance"
"""The periodic reconciler."""


def job_queues() -> tuple[str, ...]:
    """The queues of the worker pools (RQ_POOLS), the default pool first."""
    return tuple(settings.JOB_POOLS)


def all_queues() -> tuple[str, ...]:
    return (*job_queues(), CALLBACKS_QUEUE, MAINTENANCE_QUEUE)


RESULT_TTL = 60
"""Seconds RQ keeps a finished RQ job; the result itself lives in the database."""

RQ_TIMEOUT_MARGIN = 5
"""Seconds RQ's job timeout runs past the kind's time limit: the run's own deadline (jobs.deadline) ends it
first and records `time_limit` cleanly; RQ's SIGALRM stays the backstop for code that ignores the deadline."""

_PENDING_RQ_STATUSES = frozenset({RQJobStatus.QUEUED, RQJobStatus.STARTED, RQJobStatus.SCHEDULED, RQJobStatus.DEFERRED})


def get_queue(name: str, *, lane: Lane | None = None) -> PoolQueue:
    """An RQ queue of that name (a pool's pushes go through `lane`) on the process's one client for its URL (a test
    may point a queue elsewhere)."""
    # We enqueue after commit ourselves (see enqueue_job), so django-rq must not defer it again.
    connection = _connection(settings.RQ_QUEUES[name]["URL"])
    return cast(PoolQueue, django_rq.get_queue(name, commit_mode="auto", connection=connection, lane=lane))


@lru_cache(maxsize=4)
def _connection(url: str) -> Redis:
    """A thread-safe client per Redis URL, with the same short timeouts as jobsite.redis.get_redis: django-rq would
    build a client, hence a connection pool and a new TCP connection, on every call, and RQ asks each new client
    for the server version (INFO)."""
    return Redis.from_url(
        url,
        socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
        socket_connect_timeout=settings.REDIS_SOCKET_TIMEOUT,
        health_check_interval=30,
    )


def queue_depth(name: str = JOBS_QUEUE) -> int:
    """Jobs waiting in a queue: a pool's staged ones included (PoolQueue.count)."""
    return get_queue(name).count


def job_pool(kind_settings: KindSettings) -> str:
    """The pool a kind's jobs are queued on: its setting, or the default pool if that pool is not configured here
    (RQ_POOLS changed under a stored setting: its jobs still run, and the log says why)."""
    if kind_settings.pool in settings.JOB_POOLS:
        return kind_settings.pool
    logger.warning(
        "kind %s names pool %r, not one of RQ_POOLS: queued on %s", kind_settings.kind, kind_settings.pool, JOBS_QUEUE
    )
    return JOBS_QUEUE


ADMISSION_RECHECK = 1.0
"""Longest an acknowledgement waiting for room blocks on the pool's room list before it reads the depth anyway: a
job that leaves the pool other than through a worker (canceled, reconciled) sends no wake-up. Long, because a
waiter that blocks again joins the back of the line."""
ADMISSION_RECHECK_MIN = 0.01
"""Shortest block: BLPOP's timeout 0 would mean forever."""


def queue_wait_for_room(*, pool: str, limit: int, wait: float) -> int | None:
    """None as soon as the pool has room for one more job; else its depth (>= limit) after `wait` seconds.

    Back-pressure for async acknowledgements, per pool: under saturation a caller waits for room instead of
    adding to a backlog that every accepted job would wait behind. One round trip when the depth is below `limit`;
    else it blocks on the pool's room list (BLPOP: the longest waiter first), where every worker that takes a job
    pushes a wake-up: no polling, and a freed place is taken as soon as it is free. A woken waiter owns the place its
    wake-up stands for, so a request that arrived meanwhile and took it pushes the depth one over `limit`, not the
    waiter to the back of the line.
    """
    queue = get_queue(pool)
    depth = queue.count
    deadline = time.monotonic() + wait
    block_max = min(ADMISSION_RECHECK, settings.REDIS_SOCKET_TIMEOUT / 2)  # an answer within the socket timeout
    while depth >= limit and (left := deadline - time.monotonic()) > 0:
        timeout = max(ADMISSION_RECHECK_MIN, min(left, block_max))
        woken = queue.connection.blpop([room_key(pool)], timeout=timeout)
        depth = queue.count
        if woken and depth == limit:
            return None
    return depth if depth >= limit else None


def _lane(job: Job) -> Lane:
    return Lane.of(priority=job.priority, owner_id=job.owner_id)


def enqueue_jobs(entries: Sequence[tuple[Job, int]]) -> None:
    """Stage jobs, (job, time limit) each, in their pools (job.pool) under their priority and owner; RQ's job id is
    ours, RQ backs the kind's time limit, meta carries the trace."""
    if not entries:
        return
    pipeline = get_queue(entries[0][0].pool).connection.pipeline()
    # One round trip (MULTI/EXEC): RQ's registration of the queues, the jobs and their staging, which it sends apart.
    with pipeline:
        for job, time_limit in entries:
            get_queue(job.pool, lane=_lane(job)).enqueue(
                "jobs.tasks.execute_job",
                str(job.pk),
                job_id=str(job.pk),
                job_timeout=time_limit + RQ_TIMEOUT_MARGIN,
                result_ttl=RESULT_TTL,
                failure_ttl=RESULT_TTL,
                meta={TRACE_META_KEY: job.trace_context or {}},
                pipeline=pipeline,
            )
        pipeline.execute()


def enqueue_job(job: Job, *, time_limit: int) -> None:
    enqueue_jobs([(job, time_limit)])


def _enqueue_jobs_or_defer(entries: Sequence[tuple[Job, int]]) -> None:
    """After commit: enqueue now, or leave the jobs queued in the database for the reconciler."""
    try:
        enqueue_jobs(entries)
    except RedisError:
        logger.warning("enqueue of %d job(s) failed; the reconciler will enqueue them", len(entries), exc_info=True)


def enqueue_jobs_on_commit(entries: Sequence[tuple[Job, int]]) -> None:
    """Enqueue the jobs once the transaction that recorded them commits (a rolled-back job is never run), and the
    response is sent if the view asked for that (jobsite.after_response)."""
    transaction.on_commit(partial(run_once_sent, partial(_enqueue_jobs_or_defer, entries)))


def enqueue_job_on_commit(job: Job, *, time_limit: int) -> None:
    enqueue_jobs_on_commit([(job, time_limit)])


def _no_earlier_than(due: datetime) -> datetime:
    """`due` rounded up to the second: RQ's scheduled registry keeps whole seconds, rounded down."""
    return due.replace(microsecond=0) + timedelta(seconds=1 if due.microsecond else 0)


def release_rq_id(job_id: UUID | str) -> str:
    """RQ's id for the release of a scheduled job at its run_at (a cap's retries take ids of their own)."""
    return f"release-{job_id}"


def enqueue_release(job_id: UUID | str, *, at: datetime, first: bool = True) -> None:
    """Run jobs.tasks.release_job for a held job at `at`, never before (RQ's scheduler, workers --with-scheduler).

    At the front of the jobs queue: a due release waits for a free worker, not for the backlog; the job it
    queues then goes to the back like any new job. `first`: the schedule at run_at, under an id cancel can
    find; retries (a full cap, an early wake-up) get RQ's own ids, so none overwrites a release that runs.
    """
    get_queue(JOBS_QUEUE).enqueue_at(
        _no_earlier_than(at),
        "jobs.tasks.release_job",
        str(job_id),
        job_id=release_rq_id(job_id) if first else None,
        at_front=True,
        result_ttl=RESULT_TTL,
        failure_ttl=RESULT_TTL,
    )


def enqueue_release_or_defer(job_id: UUID | str, *, at: datetime, first: bool = True) -> None:
    """Schedule a release, or leave the held job to the reconciler if Redis fails."""
    try:
        enqueue_release(job_id, at=at, first=first)
    except RedisError:
        logger.warning("scheduling failed; the reconciler will release job %s", job_id, exc_info=True)


def discard_release(job_id: UUID | str) -> None:
    """Best effort: drop a canceled job's scheduled release (it would find the job canceled and do nothing)."""
    try:
        rq_job = RQJob.fetch(release_rq_id(job_id), connection=get_queue(JOBS_QUEUE).connection)
        if rq_job.get_status(refresh=False) == RQJobStatus.SCHEDULED:
            rq_job.delete()
    except (NoSuchJobError, RedisError):
        logger.info("no scheduled release of job %s to remove", job_id, exc_info=True)


def webhook_rq_id(job_id: UUID | str, n: int, *, deferral: str = "") -> str:
    """RQ's id for delivery attempt n of a job's webhook (a deferral of it adds a suffix): never reused."""
    return f"callback-{job_id}-{n}" + (f"-{deferral}" if deferral else "")


def webhook_job_timeout() -> int:
    """RQ's own time limit on a delivery: the attempt's deadline plus a margin for the database writes."""
    return int(settings.CALLBACK_TOTAL_TIMEOUT + settings.CALLBACK_INTERRUPT_MARGIN) + 1


def _webhook_next_key(job_id: UUID | str) -> str:
    return redis_key("callback", "next", job_id)


def enqueue_webhook(
    job_id: UUID | str,
    *,
    n: int,
    retries_left: int,
    give_up_at: float | None = None,
    delay: float = 0.0,
    deferral: str = "",
) -> None:
    """Put delivery attempt n of a job's webhook on the callbacks queue, now or after `delay` seconds."""
    _enqueue_delivery(
        "jobs.tasks.deliver_callback",
        (str(job_id), n, retries_left, give_up_at),
        subject_id=job_id,
        rq_id=webhook_rq_id(job_id, n, deferral=deferral),
        delay=delay,
    )


def enqueue_batch_webhook(
    batch_id: UUID | str, *, n: int, retries_left: int, delay: float = 0.0, deferral: str = ""
) -> None:
    """Put delivery attempt n of a batch's `batch.completed` webhook on the callbacks queue, as enqueue_webhook."""
    _enqueue_delivery(
        "jobs.tasks.deliver_batch_callback",
        (str(batch_id), n, retries_left),
        subject_id=batch_id,
        rq_id=webhook_rq_id(batch_id, n, deferral=deferral),
        delay=delay,
    )


def _enqueue_delivery(task: str, args: tuple[object, ...], *, subject_id: UUID | str, rq_id: str, delay: float) -> None:
    """One delivery attempt of a job's or a batch's webhook on the callbacks queue (RQ's scheduler for a delay).

    The RQ id is remembered per job or batch, so the reconciler can tell a delivery on its way from a lost one.
    """
    queue = get_queue(CALLBACKS_QUEUE)
    options = {
        "job_id": rq_id,
        "job_timeout": webhook_job_timeout(),
        "result_ttl": RESULT_TTL,
        "failure_ttl": RESULT_TTL,
    }
    if delay > 0:
        queue.enqueue_at(_no_earlier_than(datetime.now(UTC) + timedelta(seconds=delay)), task, *args, **options)
    else:
        queue.enqueue(task, *args, **options)
    remember = int(delay) + settings.CALLBACK_RECONCILE_GRACE + webhook_job_timeout()
    queue.connection.set(_webhook_next_key(subject_id), rq_id, ex=remember)


def enqueue_webhook_or_defer(job_id: UUID, *, n: int, retries_left: int) -> None:
    """After commit: enqueue the first delivery, or leave it pending in the database for the reconciler."""
    try:
        enqueue_webhook(job_id, n=n, retries_left=retries_left)
    except RedisError:
        logger.warning("enqueue failed; the reconciler will deliver the webhook of job %s", job_id, exc_info=True)


def enqueue_webhook_event(
    job_id: UUID | str, *, event: str, data: dict[str, Any], msg_id: str, retries_left: int = 1, delay: float = 0.0
) -> None:
    """Put a subscribed event's webhook (job.started, job.progress) on the callbacks queue, now or after `delay`."""
    queue = get_queue(CALLBACKS_QUEUE)
    task, args = "jobs.tasks.deliver_webhook_event", (str(job_id), event, data, msg_id, retries_left)
    options = {"job_timeout": webhook_job_timeout(), "result_ttl": RESULT_TTL, "failure_ttl": RESULT_TTL}
    if delay > 0:
        queue.enqueue_in(timedelta(seconds=math.ceil(delay)), task, *args, **options)
    else:
        queue.enqueue(task, *args, **options)


def enqueue_batch_webhook_or_defer(batch_id: UUID, *, retries_left: int) -> None:
    """After commit: enqueue a batch's first delivery, or leave it pending in the database for the reconciler."""
    try:
        enqueue_batch_webhook(batch_id, n=1, retries_left=retries_left)
    except RedisError:
        logger.warning("enqueue failed; the reconciler will deliver the webhook of batch %s", batch_id, exc_info=True)


def enqueue_webhook_test(*, user_id: int, url: str, msg_id: str) -> RQJob:
    """Put a test event on the callbacks queue: sent like a delivery attempt, in a worker's main thread."""
    return get_queue(CALLBACKS_QUEUE).enqueue(
        "jobs.tasks.send_test_webhook",
        user_id,
        url,
        msg_id,
        job_id=f"webhook-test-{msg_id}",
        job_timeout=webhook_job_timeout(),
        result_ttl=RESULT_TTL,
        failure_ttl=RESULT_TTL,
    )


def webhook_is_on_its_way(job_id: UUID | str) -> bool:
    """Whether the job's (or batch's) latest delivery RQ job waits to run, or runs and is not yet past its time limit.

    A started one past its limit belongs to a killed worker: RQ would have stopped a live one by then.
    """
    connection = get_queue(CALLBACKS_QUEUE).connection
    rq_id = connection.get(_webhook_next_key(job_id))
    if rq_id is None:
        return False
    try:
        rq_job = RQJob.fetch(rq_id.decode() if isinstance(rq_id, bytes) else rq_id, connection=connection)
    except NoSuchJobError:
        return False
    status = rq_job.get_status(refresh=False)
    if status == RQJobStatus.STARTED and rq_job.started_at is not None:
        lost_after = rq_job.started_at.replace(tzinfo=UTC) + timedelta(seconds=webhook_job_timeout())
        return datetime.now(UTC) < lost_after
    return status in _PENDING_RQ_STATUSES


def pending_in_rq(jobs: Sequence[Job]) -> set[UUID]:
    """Those of these queued jobs that RQ holds and will run: their RQ job has a pending status and their id is held
    where RQ looks (staged in its lane, on its pool's queue or RQ's intermediate list, in the started, scheduled or
    deferred registry).

    A job whose RQ status says queued or started but that nothing holds was lost in flight: a worker's pop or start
    whose reply a broken connection dropped (RQ's workers of several queues pop with BLPOP), so no worker will
    ever take it. One pipelined round trip: each job's status, and each list and registry the jobs can be in.
    """
    if not jobs:
        return set()
    connection = get_queue(JOBS_QUEUE).connection
    lists: set[str] = set()
    registries: set[str] = set()
    for job in jobs:
        queue = get_queue(job.pool or JOBS_QUEUE)  # no pool: queued before pools
        lists.update((queue.key, queue.intermediate_queue_key))
        if is_pool(queue.name):
            lists.add(_lane(job).keys(queue.name)[0])
        registries.update(
            registry.key
            for registry in (queue.started_job_registry, queue.scheduled_job_registry, queue.deferred_job_registry)
        )
    with connection.pipeline(transaction=False) as pipeline:
        for job in jobs:
            pipeline.hget(RQJob.key_for(str(job.pk)), "status")
        for key in lists:
            pipeline.lrange(key, 0, -1)
        for key in registries:
            pipeline.zrange(key, 0, -1)
        replies = pipeline.execute()
    statuses, places = replies[: len(jobs)], replies[len(jobs) :]
    held = {member.decode() for members in places for member in members}
    return {
        job.pk
        for job, status in zip(jobs, statuses, strict=True)
        if status is not None and status.decode() in _PENDING_RQ_STATUSES and str(job.pk) in held
    }


def discard_job(job: Job) -> None:
    """Best effort: drop a canceled job from its pool (the worker's claim would skip it anyway)."""
    try:
        get_queue(job.pool or JOBS_QUEUE, lane=_lane(job)).discard(str(job.pk))  # no pool: queued before pools
    except RedisError:
        logger.info("could not remove job %s from its queue", job.pk, exc_info=True)

"""RQ queues Jobsite uses, and enqueueing that never loses a job: the database row comes first."""

import logging
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from uuid import UUID

import django_rq
from django.conf import settings
from django.db import transaction
from redis.exceptions import RedisError
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.job import JobStatus as RQJobStatus

from jobsite.redis import redis_key
from jobsite.tracing import TRACE_META_KEY

logger = logging.getLogger(__name__)

JOBS_QUEUE = "jobs"
"""Async jobs of every kind."""

CALLBACKS_QUEUE = "callbacks"
"""Webhook deliveries, apart so that slow receivers never hold up job workers."""

MAINTENANCE_QUEUE = "maintenance"
"""The periodic reconciler."""

ALL_QUEUES = (JOBS_QUEUE, CALLBACKS_QUEUE, MAINTENANCE_QUEUE)

RESULT_TTL = 60
"""Seconds RQ keeps a finished RQ job; the result itself lives in the database."""

RQ_TIMEOUT_MARGIN = 5
"""Seconds RQ's job timeout runs past the kind's time limit: the run's own deadline (jobs.deadline) ends it
first and records `time_limit` cleanly; RQ's SIGALRM stays the backstop for code that ignores the deadline."""

_PENDING_RQ_STATUSES = frozenset({RQJobStatus.QUEUED, RQJobStatus.STARTED, RQJobStatus.SCHEDULED, RQJobStatus.DEFERRED})


def get_queue(name: str) -> Queue:
    # We enqueue after commit ourselves (see enqueue_job), so django-rq must not defer it again.
    return django_rq.get_queue(name, commit_mode="auto")


def queue_depth(name: str = JOBS_QUEUE) -> int:
    return get_queue(name).count


ADMISSION_POLL_FIRST = 0.005
"""Seconds before an acknowledgement waiting for room looks at the queue again; doubled up to the max."""
ADMISSION_POLL_MAX = 0.04
"""Longest pause between looks: shorter than the time the workers take to run the bounded queue's jobs, so
they never starve while acknowledgements wait."""


def queue_wait_for_room(*, limit: int, wait: float) -> int:
    """The jobs queue's depth as soon as it is below `limit`, or after `wait` seconds (then >= limit).

    Back-pressure for async acknowledgements: under saturation a caller waits for room instead of adding to
    a backlog that every accepted job would wait behind. One LLEN when there is room.
    """
    depth = queue_depth()
    deadline, pause = time.monotonic() + wait, ADMISSION_POLL_FIRST
    while depth >= limit and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(pause, left))
        pause = min(pause * 2, ADMISSION_POLL_MAX)
        depth = queue_depth()
    return depth


def enqueue_job(job_id: UUID, *, time_limit: int, trace_context: dict[str, str] | None = None) -> None:
    """Put a job on the jobs queue; RQ's job id is ours, RQ backs the kind's time limit, meta carries the trace."""
    get_queue(JOBS_QUEUE).enqueue(
        "jobs.tasks.execute_job",
        str(job_id),
        job_id=str(job_id),
        job_timeout=time_limit + RQ_TIMEOUT_MARGIN,
        result_ttl=RESULT_TTL,
        failure_ttl=RESULT_TTL,
        meta={TRACE_META_KEY: trace_context or {}},
    )


def _enqueue_job_or_defer(job_id: UUID, *, time_limit: int, trace_context: dict[str, str] | None = None) -> None:
    """After commit: enqueue now, or leave the job queued in the database for the reconciler."""
    try:
        enqueue_job(job_id, time_limit=time_limit, trace_context=trace_context)
    except RedisError:
        logger.warning("enqueue failed; the reconciler will enqueue job %s", job_id, exc_info=True)


def enqueue_job_on_commit(job_id: UUID, *, time_limit: int, trace_context: dict[str, str] | None = None) -> None:
    """Enqueue the job once the transaction that recorded it commits (a rolled-back job is never run)."""
    transaction.on_commit(partial(_enqueue_job_or_defer, job_id, time_limit=time_limit, trace_context=trace_context))


def _enqueue_jobs_or_defer(entries: list[tuple[UUID, int]], *, trace_context: dict[str, str]) -> None:
    """After commit: enqueue many jobs in one Redis pipeline, or leave them queued in the database for the reconciler."""
    queue = get_queue(JOBS_QUEUE)
    data = [
        Queue.prepare_data(
            "jobs.tasks.execute_job",
            (str(job_id),),
            job_id=str(job_id),
            timeout=time_limit + RQ_TIMEOUT_MARGIN,
            result_ttl=RESULT_TTL,
            failure_ttl=RESULT_TTL,
            meta={TRACE_META_KEY: trace_context},
        )
        for job_id, time_limit in entries
    ]
    try:
        queue.enqueue_many(data)
    except RedisError:
        logger.warning("enqueue of %d jobs failed; the reconciler will enqueue them", len(entries), exc_info=True)


def enqueue_jobs_on_commit(entries: list[tuple[UUID, int]], *, trace_context: dict[str, str]) -> None:
    """Enqueue many jobs, (id, time limit) each, as enqueue_job_on_commit does one: after commit, one round trip."""
    transaction.on_commit(partial(_enqueue_jobs_or_defer, entries, trace_context=trace_context))


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
        # RQ's scheduled registry keeps whole seconds, rounded down: round up so no retry comes early.
        due = datetime.now(UTC) + timedelta(seconds=delay)
        queue.enqueue_at(
            due.replace(microsecond=0) + timedelta(seconds=1 if due.microsecond else 0), task, *args, **options
        )
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


def is_pending_in_rq(job_id: UUID | str) -> bool:
    """Whether RQ still holds this job and will (or does) run it."""
    try:
        rq_job = RQJob.fetch(str(job_id), connection=get_queue(JOBS_QUEUE).connection)
    except NoSuchJobError:
        return False
    return rq_job.get_status(refresh=False) in _PENDING_RQ_STATUSES


def discard_job(job_id: UUID) -> None:
    """Best effort: drop a canceled job from its queue (the worker's claim would skip it anyway)."""
    try:
        get_queue(JOBS_QUEUE).remove(str(job_id))
    except RedisError:
        logger.info("could not remove job %s from its queue", job_id, exc_info=True)

"""Running a recorded job: claim it, run its kind, record the outcome and what follows a final state."""

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cache, partial
from typing import Any
from uuid import UUID

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone
from redis.exceptions import RedisError
from rq import Retry
from rq.timeouts import JobTimeoutException

from jobs import metrics, queues
from jobs.batch_progress import batch_job_finished, batch_job_started
from jobs.billing import job_refund_if_due
from jobs.cache import cache_set
from jobs.circuit import CircuitState, circuit_acquire, circuit_record, circuit_target
from jobs.concurrency import concurrency_release, concurrency_release_statement
from jobs.deadline import Deadline, DeadlineExceeded, StopRequested
from jobs.encryption import open_input, seal_result
from jobs.holding import Settled, job_dependents_settle, job_settle
from jobs.idempotency import idempotency_answer, idempotency_written
from jobs.kind_settings import get_kind_settings, job_expiry
from jobs.kinds import KINDS, KindError, RunContext
from jobs.models import CallbackStatus, Job, JobMode, JobStatus, KindSettings
from jobs.progress import ProgressReporter, job_final_announce, job_requeued_announce, job_started_announce
from jobs.retries import retry_delay
from jobs.stop import StopSignal
from jobsite.after_response import run_once_sent
from jobsite.db import insert_new, update_then, update_where, update_where_statement
from jobsite.logs import bind_context
from jobsite.tracing import get_tracer

logger = logging.getLogger(__name__)
tracer = get_tracer()

ERROR_MESSAGE_MAX = 2000
"""Characters of a failed job's error_message kept: an upstream's whole error page would bloat every read."""
ATTEMPT_MESSAGE_MAX = 500
"""Characters of each attempt_log entry's message: the log grows by one entry per attempt."""


def elapsed_ms(start: datetime, end: datetime) -> int:
    return max(0, int((end - start).total_seconds() * 1000))


@dataclass(frozen=True)
class _RowReader:
    """How a raw job row becomes a Job: its fields' columns and the converters the ORM would apply to each (JSON,
    UUIDs, SQLite datetimes), looked up once per process as a compiled query does once per query."""

    attnames: list[str]
    columns: tuple[Any, ...]
    converters: tuple[tuple[Callable[..., Any], ...], ...]

    def job(self, row: tuple[Any, ...]) -> Job:
        values = []
        for value, column, converters in zip(row, self.columns, self.converters, strict=True):
            for converter in converters:
                value = converter(value, column, connection)
            values.append(value)
        return Job.from_db(connection.alias, self.attnames, values)


@cache
def _claim_sql() -> tuple[str, _RowReader]:
    """The claim statement (PostgreSQL, SQLite >= 3.35: UPDATE ... RETURNING) and the reader of the row it returns."""
    fields = tuple(field for field in Job._meta.concrete_fields if field.column)
    quote = connection.ops.quote_name
    sql = (
        f"UPDATE {quote(Job._meta.db_table)} SET {quote('status')} = %s, {quote('started_at')} = %s,"
        f" {quote('attempts')} = {quote('attempts')} + 1, {quote('worker_name')} = %s"
        f" WHERE {quote('id')} = %s AND {quote('status')} = %s"
        f" RETURNING {', '.join(quote(str(field.column)) for field in fields)}"
    )
    columns = tuple(field.get_col(Job._meta.db_table) for field in fields)
    converters = tuple(
        tuple(connection.ops.get_db_converters(column) + column.get_db_converters(connection)) for column in columns
    )
    return sql, _RowReader([field.attname for field in fields], columns, converters)


def job_claim(job_id: UUID, *, worker_name: str = "") -> Job | None:
    """Conditionally move queued -> running; only one worker can win, a canceled job is skipped.

    One statement: the conditional UPDATE returns the row the run needs. The queue wait is computed here
    and written by the finish UPDATE (job_finish), not by a statement of its own.
    """
    now = timezone.now()
    sql, reader = _claim_sql()
    params = (
        JobStatus.RUNNING,
        Job._meta.get_field("started_at").get_db_prep_value(now, connection),
        worker_name[: Job._meta.get_field("worker_name").max_length],
        Job._meta.pk.get_db_prep_value(job_id, connection),
        JobStatus.QUEUED,
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()  # to the end: SQLite finishes (and commits) the statement only then
    if not rows:
        return None
    job = reader.job(rows[0])
    # Only the last wait: a job back on the queue (retry, lost worker) counts from when it went back.
    job.queue_wait_ms = elapsed_ms(job.queued_at or job.created_at, now)
    labels = {"kind": job.kind, "queue": job.pool or metrics.WEB_QUEUE_LABEL, "priority": job.priority}
    metrics.JOB_QUEUE_WAIT.labels(**labels).observe(job.queue_wait_ms / 1000)
    return job


def attempt_log_with(job: Job, *, code: str, message: str, callers_fault: bool = False) -> list[dict[str, Any]]:
    """The job's attempt log with this attempt's failure appended: which worker ran it, from when until when."""
    entry = {
        "n": job.attempts,
        "at": timezone.now().isoformat(),
        "code": code,
        "message": message[:ATTEMPT_MESSAGE_MAX],
    }
    started_at = job.started_at.isoformat() if job.started_at else None
    return [
        *job.attempt_log,
        {**entry, "callers_fault": callers_fault, "worker": job.worker_name, "started_at": started_at},
    ]


def job_finish(
    job: Job,
    *,
    status: str,
    result: Any = None,
    error_code: str = "",
    error_message: str = "",
    callers_fault: bool = False,
) -> bool:
    """Record the outcome, only if this attempt still owns the job (a reaped job is not overwritten).

    A job whose cancel was asked during the run (canceling) keeps a result that made it (the cancel came
    too late); any other end is the cancel's: canceled, with what ended the attempt in its attempt_log.
    The final state and its refund commit together: no reader sees a failed job before its refund, and a
    worker killed in between cannot leave the refund undone.
    """
    now = timezone.now()
    log = (
        attempt_log_with(job, code=error_code, message=error_message, callers_fault=callers_fault)
        if error_code
        else job.attempt_log
    )
    outcome = {
        "status": status,
        "result": result,
        "error_code": error_code,
        "error_message": error_message[:ERROR_MESSAGE_MAX],
        "attempt_log": log,
        "finished_at": now,
        "expires_at": job_expiry(job.kind, now),
        "run_ms": elapsed_ms(job.started_at or now, now),  # a running job always has started_at
        "queue_wait_ms": job.queue_wait_ms,
    }
    if job._state.adding:  # a sync job with nothing to account for (jobs.pipeline) is recorded with its outcome
        for name, value in outcome.items():
            setattr(job, name, value)
        insert_new(job)
        job_on_final(job)
        return True
    # PostgreSQL writes the outcome and gives the slot back in one statement. A success outside a batch then needs no
    # transaction: job_on_final writes nothing else for it (no refund, no batch count).
    release_with_outcome = job.holds_slot and connection.vendor == "postgresql"
    alone = status == JobStatus.SUCCEEDED and job.batch_id is None and (release_with_outcome or not job.holds_slot)
    with nullcontext() if alone else transaction.atomic():
        # One statement on the usual path; the second only when the first found the job no longer running.
        finished = status != JobStatus.CANCELED and _outcome_write(
            job, JobStatus.RUNNING, outcome, release=release_with_outcome
        )
        if not finished and job.mode == JobMode.ASYNC:
            if status != JobStatus.SUCCEEDED:
                outcome.update(status=JobStatus.CANCELED, result=None, error_code="", error_message="")
            finished = _outcome_write(job, JobStatus.CANCELING, outcome, release=release_with_outcome)
        if finished:
            for name, value in outcome.items():  # the row now holds exactly these: no need to read it back
                setattr(job, name, value)
            if not release_with_outcome:
                concurrency_release(job)
            job_on_final(job)
    return bool(finished)


def _outcome_write(job: Job, status_now: str, outcome: dict[str, Any], *, release: bool) -> int:
    """Write the outcome if this attempt still owns the job in `status_now`: the rows written (0 or 1); `release`
    (PostgreSQL): give the job's slot back in the same statement, if it wrote."""
    # The flag is matched, not trusted: a dependent added since the claim fails the first UPDATE and the
    # second tells us (the flag is never cleared), so no dependent is left waiting. Usually one UPDATE.
    owned = {"id": job.pk, "attempts": job.attempts, "status": status_now}
    written = _outcome_update(
        job, owned if job.has_dependents else {**owned, "has_dependents": False}, outcome, release
    )
    if not written and not job.has_dependents and _outcome_update(job, owned, outcome, release):
        written, job.has_dependents = 1, True
    return written


def _outcome_update(job: Job, where: dict[str, Any], outcome: dict[str, Any], release: bool) -> int:
    """The outcome's UPDATE; on PostgreSQL, in the same statement and only if it wrote: the slot's release
    (`release`) and the answer to the job's Idempotency-Key (a sync job's request holding one)."""
    answer = idempotency_answer(job, outcome=outcome) if connection.vendor == "postgresql" else None
    if not release and answer is None:
        return update_where(Job, where=where, values=outcome)
    # The slot before the key's record, as an acceptance takes them: a duplicate's acceptance cannot deadlock with this.
    followers = [concurrency_release_statement(job)] if release else []
    if answer is not None:
        followers.append(answer.statement)
    written = update_then(update_where_statement(Job, where=where, values=outcome), followers)
    if written and answer is not None:
        idempotency_written(answer)
    return written


def job_on_final(job: Job) -> None:
    """Everything that follows a job reaching a final state."""
    job_refund_if_due(job)
    job_final_announce(job)
    if job.batch_id is not None:
        batch_job_finished(batch_id=job.batch_id, status=job.status)
    logger.info("job finished", extra={"job_id": str(job.id), "status": job.status, "kind": job.kind})
    metrics.JOBS_FINISHED.labels(kind=job.kind, mode=job.mode, outcome=job.status).inc()
    if job.run_ms is not None:
        queue = job.pool or metrics.WEB_QUEUE_LABEL
        metrics.JOB_RUN_TIME.labels(kind=job.kind, queue=queue, priority=job.priority).observe(job.run_ms / 1000)
    if job.callback_status == CallbackStatus.PENDING and not _WORKER_DELIVERS_FIRST.get():
        retries = get_kind_settings(job.kind).callback_retries
        deliver = partial(queues.enqueue_webhook_or_defer, job.pk, n=1, retries_left=retries)
        transaction.on_commit(partial(run_once_sent, deliver))  # a cache hit's webhook follows its acknowledgement
    if job.has_dependents:
        transaction.on_commit(partial(_dependents_settle, job.pk))


def _dependents_settle(job_id: UUID) -> None:
    # Not this worker's first-delivery duty: the dependents' webhooks go by the callbacks queue.
    with _worker_delivers_first(False):
        job_dependents_settle(job_id=job_id, finalize=job_on_final)


def job_held_settle(*, job_id: UUID, retry_when_full: bool = True) -> Settled:
    """Move a held (scheduled or waiting) job on as far as its conditions allow (jobs.holding.job_settle)."""
    return job_settle(job_id=job_id, finalize=job_on_final, retry_when_full=retry_when_full)


_WORKER_DELIVERS_FIRST: ContextVar[bool] = ContextVar("worker_delivers_first", default=False)
"""Set while a worker runs a job whose first webhook attempt it makes itself (job_execute's `deliver_first`)."""


@contextmanager
def _worker_delivers_first(enabled: bool) -> Iterator[None]:
    token = _WORKER_DELIVERS_FIRST.set(enabled)
    try:
        yield
    finally:
        _WORKER_DELIVERS_FIRST.reset(token)


def _job_retry_later(job: Job, *, code: str, message: str) -> bool:
    """Record a transiently failed attempt and hand the job back: async to the queue, sync to its caller."""
    owned = Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING, attempts=job.attempts)
    log = attempt_log_with(job, code=code, message=message)
    if job._state.adding:  # not recorded yet: only this request knows the job
        job.attempts, job.attempt_log = job.attempts + 1, log
        return True
    if job.mode == JobMode.SYNC:
        return bool(owned.update(attempts=F("attempts") + 1, attempt_log=log))
    requeued = owned.update(
        status=JobStatus.QUEUED, started_at=None, queued_at=timezone.now(), attempt_log=log, progress=None
    )
    if requeued:
        job_requeued_announce(job)
    return bool(requeued)


def job_run(job: Job, *, deadline: Deadline | None = None) -> float | None:
    """Run a claimed job's kind and record its outcome; returns the delay before a due retry, else None.

    The run ends at `deadline` (default: the kind's time limit from now). Never raises for the kind's own
    failures.
    """
    kind = KINDS[job.kind]
    bind_context(job_id=str(job.id), user_id=job.owner_id, endpoint=job.endpoint)
    kind_settings = get_kind_settings(job.kind)
    # Only async jobs can be canceled while they run: a sync one's caller holds the request.
    stop = StopSignal(job.id) if job.mode == JobMode.ASYNC else None
    deadline = deadline or Deadline.after(kind_settings.time_limit, stop_requested=stop)
    params = open_input(job.input)
    target = circuit_target(kind_settings, params)
    if circuit_acquire(kind_settings, target, take_trial=True) == CircuitState.OPEN:
        message = f"the {job.kind} circuit of {target} is open after repeated upstream failures"
        job_finish(job, status=JobStatus.FAILED, error_code="circuit_open", error_message=message)
        return None
    context = RunContext(owner_id=job.owner_id, job_id=str(job.id), deadline=deadline)
    if job.mode == JobMode.ASYNC:  # a sync run has no one to tell
        job_started_announce(job, stop=stop)
        context = replace(context, progress=ProgressReporter(job))
    started = time.perf_counter()
    attributes: dict[str, str | int] = {"job.id": str(job.id), "job.kind": job.kind, "job.attempt": job.attempts}
    try:
        with tracer.start_as_current_span("job.run", attributes=attributes):
            result = kind.run(params, context)
    except KindError as exc:
        if exc.transient:  # the upstream failed; our refusals and the caller's errors say nothing about it
            circuit_record(kind_settings, target, failed=True)
        delay = retry_delay(kind_settings, attempt=job.attempts) if exc.transient else None
        if delay is not None and job.mode == JobMode.SYNC and delay >= deadline.remaining():
            delay = None  # a sync job's retries share its one deadline
        if delay is not None and _job_retry_later(job, code=exc.code, message=exc.message):
            return delay
        job_finish(
            job,
            status=JobStatus.FAILED,
            error_code=exc.code,
            error_message=exc.message,
            callers_fault=exc.callers_fault,
        )
    except StopRequested:
        job_finish(job, status=JobStatus.CANCELED)
    except (DeadlineExceeded, JobTimeoutException):
        circuit_record(kind_settings, target, failed=True)
        limit = kind_settings.time_limit
        job_finish(job, status=JobStatus.FAILED, error_code="time_limit", error_message=f"ran over {limit} s")
    except Exception:
        logger.exception("job %s crashed after %.3f s", job.id, time.perf_counter() - started)
        job_finish(job, status=JobStatus.FAILED, error_code="internal_error", error_message="the job crashed")
    else:
        circuit_record(kind_settings, target, failed=False)
        stored = seal_result(kind_settings, result)
        # The database first: the committed result is the outcome; the cache is a best-effort copy of it, which a
        # sync job's caller does not wait for.
        if job_finish(job, status=JobStatus.SUCCEEDED, result=stored):
            run_once_sent(partial(_cache_store, kind_settings, params, stored, owner_id=job.owner_id))
    return None


def _cache_store(kind_settings: KindSettings, params: dict[str, Any], stored: Any, *, owner_id: int) -> None:
    """Best effort: a Redis error loses only a future cache hit, never a finished job's outcome."""
    try:
        cache_set(kind_settings, params, stored, owner_id=owner_id)
    except RedisError:
        logger.warning("result not cached: Redis failed", exc_info=True)


def job_execute(
    *, job_id: UUID | str, worker_name: str = "", deliver_first: Callable[[Job], object] | None = None
) -> Retry | None:
    """Worker entry: claim the job and run it; a job already claimed or canceled is left alone.

    With `deliver_first`, the first webhook attempt of a job this worker finished is made here, right
    after the final state commits, instead of an RQ hop to the callbacks queue. Crash-safe as the hop was:
    a worker that dies in between leaves the delivery pending in the database for the reconciler.
    A due retry is returned as an RQ Retry: RQ schedules the same RQ job (ScheduledJobRegistry, so the
    reconciler sees it pending) and a worker started --with-scheduler runs it after the delay.
    """
    job = job_claim(UUID(str(job_id)), worker_name=worker_name)
    if job is None:
        return None
    if job.batch_id is not None:
        batch_job_started(batch_id=job.batch_id, started_at=job.started_at)
    with _worker_delivers_first(deliver_first is not None):
        delay = job_run(job)
    if deliver_first is not None and job.is_final and job.callback_status == CallbackStatus.PENDING:
        deliver_first(job)  # the in-memory job is final only if this worker's finish committed
    # max: our attempts counter decides, RQ's own retry count never reaches it.
    return None if delay is None else Retry(max=job.attempts, interval=[math.ceil(delay)])

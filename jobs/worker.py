"""RQ worker and cron scheduler that ride out a Redis outage of any length instead of exiting.

RQ 3.0 retries only its blocking dequeue on a connection error; every other Redis call of the main loop
(suspension check, maintenance, heartbeat, job bookkeeping) ends the worker with "unhandled exception,
quitting", and rq's CronScheduler has no reconnect at all. These subclasses wait for Redis with capped
exponential backoff at each of those steps and carry on; the run command's supervisor restarts whatever
still dies (see jobsite/__main__.py).
"""

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import close_old_connections
from django_rq.cron import DjangoCronScheduler
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import worker_registration
from rq.exceptions import StopRequested
from rq.job import Job as RQJob
from rq.queue import Queue
from rq.suspension import WORKERS_SUSPENDED
from rq.utils import now
from rq.worker import SimpleWorker

logger = logging.getLogger(__name__)

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)
"""Errors that mean Redis is unreachable (as opposed to a bad command)."""

RECONNECT_FIRST_DELAY = 0.5
"""Seconds before the first reconnect attempt; doubled after each failure."""

RECONNECT_MAX_DELAY = 5.0
"""Cap of the reconnect backoff: Redis back means work resumes within this many seconds."""

T = TypeVar("T")


def wait_for_redis(connection: Redis, *, who: str, should_stop: Callable[[], bool] = lambda: False) -> None:
    """Block until Redis answers PING, with capped exponential backoff; raise StopRequested if asked to stop."""
    delay = RECONNECT_FIRST_DELAY
    while True:
        if should_stop():
            raise StopRequested()
        try:
            connection.ping()
        except REDIS_DOWN as exc:
            logger.warning("%s: Redis unreachable (%s); retrying in %.1f s", who, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_DELAY)
        else:
            logger.info("%s: Redis answers again", who)
            return


SCHEDULER_CHECK_INTERVAL = 5
"""Seconds an idle worker blocks on its queues before its loop runs again (heartbeat, scheduler check)."""

HEARTBEAT_MIN_INTERVAL = 1.0
"""Seconds within which a worker's heartbeat is not sent again unless it asks for a longer life: RQ beats before
and after each dequeue and after each job, against a registration that lives worker_ttl + 60 (480 s)."""


class ResilientWorker(SimpleWorker):
    """SimpleWorker whose main loop survives Redis outages: each step that touches Redis waits and retries."""

    max_connection_wait_time = RECONNECT_MAX_DELAY  # RQ's own dequeue retry backs off to 60 s otherwise
    # RQ's "Result is kept for N seconds" after every job says nothing per job (RESULT_TTL is fixed) and cost ~3%
    # of a worker's CPU on light jobs (bench/README.md); its other per-job lines: jobsite.logs.RqPerJobLinesFilter.
    log_result_lifespan = False
    _next_recovery_check = 0.0
    """time.monotonic() after which the next heartbeat checks the registration and the scheduler."""
    _last_beat = (float("-inf"), 0)
    """time.monotonic() of the last heartbeat, and the seconds it gave the registration to live."""
    _suspension_read = (float("-inf"), False)
    """time.monotonic() of the last read of RQ's suspension flag that rode with a state write, and its answer."""

    @property
    def dequeue_timeout(self) -> int:
        return SCHEDULER_CHECK_INTERVAL

    def _stop_requested_now(self) -> bool:
        return bool(self._stop_requested)

    def _retrying(self, step: Callable[[], T]) -> T:
        """Run a step that is safe to repeat until Redis lets it finish."""
        while True:
            try:
                return step()
            except REDIS_DOWN:
                wait_for_redis(self.connection, who=f"worker {self.name}", should_stop=self._stop_requested_now)

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        self._retrying(lambda: super(ResilientWorker, self).bootstrap(*args, **kwargs))

    def check_for_suspension(self, burst: bool) -> None:
        read_at, suspended = self._suspension_read
        self._suspension_read = ResilientWorker._suspension_read  # an answer serves one check
        if not suspended and time.monotonic() - read_at < HEARTBEAT_MIN_INTERVAL:
            return  # read with the state this loop just wrote: RQ would ask again, in a round trip of its own
        self._retrying(lambda: super(ResilientWorker, self).check_for_suspension(burst))

    def run_maintenance_tasks(self) -> None:
        self._retrying(super().run_maintenance_tasks)

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        return self._retrying(lambda: super(ResilientWorker, self).dequeue_job_and_maintain_ttl(timeout, max_idle_time))

    def set_state(self, state: str, pipeline: Any = None) -> None:
        if pipeline is not None:
            super().set_state(state, pipeline)
        elif state != self.get_state():  # RQ writes "idle" again before its next dequeue: nothing new to send
            # RQ beats right after a job's "idle", then checks its suspension flag: one round trip for the three
            with self.connection.pipeline(transaction=False) as both:
                super().set_state(state, both)
                self.heartbeat(pipeline=both)
                both.exists(WORKERS_SUSPENDED)
                *_, suspended = both.execute()
            self._suspension_read = (time.monotonic(), bool(suspended))

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        timeout = timeout or self.worker_ttl + 60
        beaten_at, lives = self._last_beat
        if pipeline is not None:  # part of RQ's own transaction, or of a state's round trip
            super().heartbeat(timeout, pipeline)
            self._last_beat = (time.monotonic(), timeout)
        elif time.monotonic() - beaten_at >= HEARTBEAT_MIN_INTERVAL or timeout > lives:
            self._retrying(lambda: self._heartbeat_sent(timeout))
            self._last_beat = (time.monotonic(), timeout)
        # RQ beats several times per job: checking once per interval (a SISMEMBER round trip) recovers as soon.
        if pipeline is None and time.monotonic() >= self._next_recovery_check:
            self._retrying(self._ensure_registered)
            self._retrying(self._ensure_scheduler)
            self._next_recovery_check = time.monotonic() + SCHEDULER_CHECK_INTERVAL

    def _heartbeat_sent(self, timeout: int) -> None:
        """RQ's heartbeat (HSET and two EXPIREs) in one round trip instead of three."""
        with self.connection.pipeline(transaction=False) as beat:
            super().heartbeat(timeout, beat)
            beat.execute()

    def _ensure_registered(self) -> None:
        """Register again after Redis lost its data (restart, FLUSHALL): dashboards and /healthz count workers."""
        if self.birth_date is None or self.connection.sismember(worker_registration.REDIS_WORKER_KEYS, self.key):
            return
        with self.connection.pipeline() as pipeline:
            pipeline.hset(self.key, mapping=self.serialize())
            worker_registration.register(self, pipeline)
            pipeline.expire(self.key, self.worker_ttl + 60)
            pipeline.execute()
        logger.info("worker %s: registered again after Redis lost its data", self.name)

    def _ensure_scheduler(self) -> None:
        """Restart (or take over) the scheduler if its process is gone: RQ itself checks only every 10 minutes."""
        process = self.scheduler._process if self.scheduler else None
        if self.scheduler and not self._stop_requested and not (process and process.is_alive()):
            self.scheduler.acquire_locks(auto_start=True)

    def handle_execution_ended(self, job: RQJob, queue: Queue, heartbeat_ttl: int) -> None:
        # RQ also HSETs the job's last_heartbeat here, a round trip of its own per job that no liveness check reads
        # (rq 3.0 tracks that by the execution); a success's save still writes the field with the job.
        job.ended_at = job.last_heartbeat = now()

    def handle_job_success(self, job: RQJob, queue: Queue, started_job_registry: Any, execution: Any) -> None:
        if job.repeats_left or job.has_rate_limit:
            super().handle_job_success(job, queue, started_job_registry, execution)
            return
        # RQ first WATCHes and reads the job's RQ dependents (two round trips per job); Jobsite gives RQ jobs no
        # dependents (a job's dependencies live in the database: jobs.dependencies), so the outcome is one MULTI.
        assert job.ended_at is not None and job.started_at is not None  # set by RQ before it calls this
        elapsed = job.ended_at - job.started_at
        result_ttl = job.get_result_ttl(self.default_result_ttl)
        with self.connection.pipeline() as pipeline:
            self.increment_successful_job_count(pipeline=pipeline)
            self.increment_total_working_time(elapsed, pipeline)
            if result_ttl != 0:
                job._handle_success(
                    result_ttl,
                    pipeline=pipeline,
                    worker_name=self.name,
                    execution_id=execution.id,
                    execution_started_at=execution.created_at,
                    execution_ended_at=job.ended_at,
                )
            job.cleanup(result_ttl, pipeline=pipeline, remove_from_queue=False)
            self.cleanup_execution(job, pipeline=pipeline, execution=execution)
            pipeline.execute()
        self.log.info("Successfully completed job %s in %ss on worker %s", job.id, elapsed, self.name)  # as RQ's

    def execute_job(self, job: RQJob, queue: Queue) -> None:
        # A job ran at most once here: if RQ's bookkeeping around it fails, the database row says what happened
        # and the reconciler re-enqueues or rescues the job; never run it again from this loop.
        close_old_connections()  # a connection the database dropped (outage, restart) is replaced, not reused
        try:
            super().execute_job(job, queue)
        except REDIS_DOWN:
            logger.warning("worker %s: Redis went away around job %s; the reconciler settles it", self.name, job.id)
            wait_for_redis(self.connection, who=f"worker {self.name}", should_stop=self._stop_requested_now)
        finally:
            close_old_connections()

    def teardown(self) -> None:
        try:
            super().teardown()
        except REDIS_DOWN:
            logger.warning("worker %s: Redis unreachable at shutdown; its registration expires by itself", self.name)


class ResilientCronScheduler(DjangoCronScheduler):
    """rq's CronScheduler, restarted in place when Redis goes away instead of exiting."""

    def start(self) -> None:
        while True:
            try:
                super().start()  # returns on SIGINT/SIGTERM (StopRequested is handled inside)
                return
            except REDIS_DOWN:
                try:
                    wait_for_redis(self.connection, who=f"cron {self.name}")
                except StopRequested:
                    return

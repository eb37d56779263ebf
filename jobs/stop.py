"""Stopping a running job early (a cancel): the cancel service raises a flag in Redis, the run polls it.

The flag, not the database: a run checks between steps (thousands of times a second for `hash`), and a
Redis read at most every STOP_POLL_INTERVAL costs nothing noticeable where a query per check would.
The database stays the source of truth: a job whose flag Redis lost still ends by its worker's finish
(jobs.execution.job_finish writes `canceled` for a canceling job that ends without a result) or the
reconciler, within its time limit.
"""

import logging
import time
from uuid import UUID

from redis.exceptions import RedisError

from jobsite.redis import get_redis, redis_key

logger = logging.getLogger(__name__)

STOP_POLL_INTERVAL = 0.2
"""Seconds between two reads of a run's stop flag: a cancel is seen within this."""
STOP_POLL_BACKOFF = 5.0
"""Seconds before the flag is read again after Redis failed: a dead Redis must not slow every step."""


def stop_key(job_id: UUID | str) -> str:
    return redis_key("job", "stop", job_id)


def stop_request(job_id: UUID | str, *, ttl: int) -> None:
    """Raise the job's stop flag for `ttl` seconds (past the run's time limit); best effort, see the module."""
    try:
        get_redis().set(stop_key(job_id), 1, ex=max(1, ttl))
    except RedisError:
        logger.warning("stop flag of job %s not set: Redis failed; it ends by its time limit", job_id)


class StopSignal:
    """Whether a stop of one job's run was asked for, read from Redis at most every STOP_POLL_INTERVAL."""

    def __init__(self, job_id: UUID | str):
        self.key = stop_key(job_id)
        self._next_read = 0.0
        self._requested = False

    def read_elsewhere(self, requested: bool) -> None:
        """The flag as a round trip the run made anyway just read it (EXISTS): the next read is one interval away."""
        self._requested = self._requested or requested
        self._next_read = time.monotonic() + STOP_POLL_INTERVAL

    def __call__(self) -> bool:
        now = time.monotonic()
        if self._requested or now < self._next_read:
            return self._requested
        try:
            self._requested = bool(get_redis().exists(self.key))
            self._next_read = now + STOP_POLL_INTERVAL
        except RedisError:
            self._next_read = now + STOP_POLL_BACKOFF
        return self._requested

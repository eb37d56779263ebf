"""What happens to an async job while it runs, told through Redis: one stream of events per job.

Workers append `status` and `progress` events, and a `final` one after the commit that makes the job final;
readers never poll the database for them. Event streams (SSE) read the job's stream with XREAD BLOCK from the
last event id they sent, so a reconnecting client resumes with Last-Event-ID, the stream's own ids; a held
submission (`Prefer: wait`) blocks on a second stream that only the final event is added to, so it wakes once.
Streams are Redis streams rather than pub/sub: a reader that arrives late (or reconnects) still finds what it
missed, and many readers read one stream without taking anything from each other. Best effort: a Redis error
loses events, never a job; readers fall back on the database (a held request answers 202, a stream ends and
its client reconnects to the job's state read from the database).
"""

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast
from uuid import UUID

from django.conf import settings
from redis.exceptions import RedisError

from jobs.stop import StopSignal
from jobsite.redis import BLOCK_MAX_SECONDS, get_blocking_redis, get_redis, redis_key

logger = logging.getLogger(__name__)

STATUS_EVENT = "status"
PROGRESS_EVENT = "progress"
FINAL_EVENT = "final"
"""The job reached a final status (committed): readers take the job from the database."""

EVENTS_MAXLEN = 200
"""Entries a job's stream keeps (approximately): progress is throttled to far fewer per run."""

STREAM_START = "0-0"
"""The id before every entry: reading after it reads the whole stream."""


def _events_key(job_id: UUID | str) -> str:
    return redis_key("job", job_id, "events")


def _final_key(job_id: UUID | str) -> str:
    return redis_key("job", job_id, "final")


@dataclass(frozen=True)
class JobEvent:
    id: str
    """The stream entry's id (`<ms>-<n>`): the SSE event id."""
    event: str
    data: dict[str, Any]


def job_event_publish(job_id: UUID | str, event: str, data: dict[str, Any], *, stop: StopSignal | None = None) -> None:
    """Append an event to the job's stream (one round trip); the final one is also added to its final stream.

    With `stop`, the same round trip reads the run's stop flag: a run announces itself as it starts, when its
    first read of the flag is due.
    """
    pipe = get_redis().pipeline(transaction=False)
    keys = [_events_key(job_id), *([_final_key(job_id)] if event == FINAL_EVENT else [])]
    for key in keys:
        pipe.xadd(key, {"event": event, "data": json.dumps(data)}, maxlen=EVENTS_MAXLEN, approximate=True)
        pipe.expire(key, settings.JOB_EVENTS_TTL)
    if stop is not None:
        pipe.exists(stop.key)
    try:
        answers = pipe.execute()
    except RedisError:
        logger.warning("event %s of job %s lost: Redis failed", event, job_id, exc_info=True)
        return
    if stop is not None:
        stop.read_elsewhere(bool(answers[-1]))


def job_events_clear(job_id: UUID | str) -> None:
    """Forget a job's events (staff requeued a final job: it starts over)."""
    try:
        get_redis().delete(_events_key(job_id), _final_key(job_id))
    except RedisError:
        logger.warning("events of job %s not cleared: Redis failed", job_id, exc_info=True)


Entries = list[tuple[bytes, dict[bytes, bytes]]]
"""Stream entries as redis-py returns them (bytes: the clients do not decode)."""


def _decoded(entries: Entries) -> list[JobEvent]:
    return [
        JobEvent(id=entry_id.decode(), event=fields[b"event"].decode(), data=json.loads(fields[b"data"]))
        for entry_id, fields in entries
    ]


def job_events_read(job_id: UUID | str, *, after: str, block: float = 0.0) -> list[JobEvent]:
    """The job's events after the id `after`, waiting up to `block` seconds (at most BLOCK_MAX_SECONDS) for one.

    One round trip. Raises RedisError.
    """
    key = _events_key(job_id)
    if block <= 0:
        return _decoded(cast(Entries, get_redis().xrange(key, min=f"({after}", count=EVENTS_MAXLEN)))
    block_ms = max(1, int(min(block, BLOCK_MAX_SECONDS) * 1000))
    answer = cast(
        list[tuple[bytes, Entries]], get_blocking_redis().xread({key: after}, count=EVENTS_MAXLEN, block=block_ms)
    )
    return [event for _, entries in answer or [] for event in _decoded(entries)]


def job_wait_final(job_id: UUID | str, *, seconds: float) -> bool:
    """Whether the job became final within `seconds`: XREAD BLOCK on its final stream, one round trip per
    BLOCK_MAX_SECONDS. False, too, when Redis fails: the caller answers from the database."""
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            block_ms = max(1, int(min(left, BLOCK_MAX_SECONDS) * 1000))
            if get_blocking_redis().xread({_final_key(job_id): STREAM_START}, count=1, block=block_ms):
                return True
    except RedisError:
        logger.warning("waiting for job %s: Redis failed", job_id, exc_info=True)
    return False


_held = threading.BoundedSemaphore(settings.HELD_REQUESTS_PER_PROCESS) if settings.HELD_REQUESTS_PER_PROCESS else None
"""The threads of this process that may be held waiting on a job (HELD_REQUESTS_PER_PROCESS)."""


def held_request_take() -> bool:
    """One of this process's held-request slots if one is free now (never waits for one); give it back with
    held_request_release()."""
    return _held is not None and _held.acquire(blocking=False)


def held_request_release() -> None:
    if _held is not None:
        _held.release()


@contextmanager
def held_request() -> Iterator[bool]:
    """A held-request slot for the block, if one is free now (True), else False."""
    taken = held_request_take()
    try:
        yield taken
    finally:
        if taken:
            held_request_release()

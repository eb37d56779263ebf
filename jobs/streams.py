"""Job event streams (Server-Sent Events) under WSGI gunicorn gthread: bounded, so they never starve the web tier.

A stream holds its gunicorn thread while it is open, blocked in XREAD on the job's Redis stream (jobs.events),
not polling the database. So each stream lives at most STREAM_MAX_SECONDS and then ends with a `retry:` hint:
EventSource reconnects with Last-Event-ID (the Redis stream's entry ids) and resumes without repeats; at most
HELD_REQUESTS_PER_PROCESS threads of a process are held at once (waits included), and each user at most their
policy's `max_streams_per_user` streams (a Redis lease per stream that ends on its own if its process dies).
Chosen over an ASGI route because the web tier is one WSGI process type: a second server kind (uvicorn beside
gunicorn) would double what is deployed, sized and monitored for one endpoint; bounded streams cost a reconnect
every STREAM_MAX_SECONDS, a few milliseconds and one database read each.
"""

import json
import logging
import math
import time
from collections.abc import Iterator
from uuid import UUID

from django.conf import settings
from redis.exceptions import RedisError
from rest_framework.renderers import JSONRenderer

from accounts.models import EndpointPolicy, User
from jobs.events import (
    FINAL_EVENT,
    STATUS_EVENT,
    STREAM_START,
    JobEvent,
    held_request_release,
    held_request_take,
    job_events_read,
)
from jobs.leases import lease_acquire, lease_release
from jobs.models import Job
from jobs.progress import job_event_data
from jobs.selectors import job_get, job_get_or_raise
from jobs.serializers import JobSerializer
from jobsite.errors import ServiceUnavailable, TooManyStreams
from jobsite.redis import redis_key

logger = logging.getLogger(__name__)

JOB_EVENT = "job"
"""The last event of a stream: the final job, as GET /api/v1/jobs/{id}/ shows it."""

FINAL_EVENT_ID = "final"
"""The id of the `job` event: a client that reconnects with it has had everything (204)."""

LAST_EVENT_ID_PATTERN = r"^([0-9]{1,19}-[0-9]{1,19}|final)$"
"""A Last-Event-ID this service sent: a Redis stream entry id (two 64-bit numbers; 19 digits always fit), or
FINAL_EVENT_ID."""

LEASE_MARGIN_SECONDS = 5
"""A stream's per-user lease outlives the stream by this much (its final read), and ends on its own after."""


def _sse(event: str, data: str, *, event_id: str) -> str:
    return f"id: {event_id}\nevent: {event}\ndata: {data}\n\n"


class JobEventStream:
    """One open stream: iterated by the WSGI server; close() (called by Django when the response closes, even
    before the first event) gives back the user's lease and the process's held-request slot."""

    def __init__(self, *, user: User, job: Job, after: str | None, lease: tuple[str, str] | None) -> None:
        self.user, self.job, self.after, self._lease = user, job, after, lease
        self._closed = False

    def __iter__(self) -> Iterator[str]:
        return self._events()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        held_request_release()
        if self._lease is not None:
            try:
                lease_release(self._lease)
            except RedisError:  # the lease ends on its own
                logger.warning("stream lease of user %s not released: Redis failed", self.user.pk, exc_info=True)

    def _final(self) -> str:
        job = job_get(user=self.user, job_id=self.job.pk) or self.job
        return _sse(JOB_EVENT, JSONRenderer().render(JobSerializer(job).data).decode(), event_id=FINAL_EVENT_ID)

    def _read(self, after: str, *, block: float = 0.0) -> list[JobEvent] | None:
        try:
            return job_events_read(self.job.pk, after=after, block=block)
        except RedisError:
            logger.warning("stream of job %s: Redis failed; the client reconnects", self.job.pk, exc_info=True)
            return None

    def _events(self) -> Iterator[str]:
        deadline = time.monotonic() + settings.STREAM_MAX_SECONDS
        after = self.after or STREAM_START
        events = self._read(after)
        if self.after is None and not events and not self.job.is_final:  # nothing told yet: the state now
            data = job_event_data(self.job, progress=self.job.progress)
            yield _sse(STATUS_EVENT, json.dumps(data), event_id=STREAM_START)
        while events is not None:
            for event in events:
                if event.event == FINAL_EVENT:
                    yield self._final()
                    return
                yield _sse(event.event, json.dumps(event.data), event_id=event.id)
                after = event.id
            if self.job.is_final:  # final when the stream opened, its final event gone with Redis
                yield self._final()
                return
            left = deadline - time.monotonic()
            if left <= 0:
                break
            events = self._read(after, block=min(left, settings.STREAM_HEARTBEAT_SECONDS))
            if events == [] and deadline > time.monotonic():
                yield ": keep-alive\n\n"
        yield f"retry: {settings.STREAM_RETRY_MS}\n\n"


def _user_streams_key(user: User) -> str:
    return redis_key("streams", "user", user.pk)


def job_event_stream_open(
    *, user: User, policy: EndpointPolicy, job_id: UUID, last_event_id: str | None
) -> JobEventStream | None:
    """An event stream of the user's job, or None when the client already has its final event (204).

    Refused beyond the user's cap (429 too_many_streams) or when this process holds all the threads it may
    (503: another process, or a moment later, has room).
    """
    job = job_get_or_raise(user=user, job_id=job_id)
    if job.is_final and last_event_id == FINAL_EVENT_ID:
        return None
    lease = None
    if policy.max_streams_per_user:
        lease_ms = int((settings.STREAM_MAX_SECONDS + LEASE_MARGIN_SECONDS) * 1000)
        lease = lease_acquire(_user_streams_key(user), slots=policy.max_streams_per_user, lease_ms=lease_ms)
        if lease is None:
            retry_after = math.ceil(settings.STREAM_MAX_SECONDS)
            raise TooManyStreams(
                f"You have {policy.max_streams_per_user} event streams open, the most allowed; close one first.",
                headers={"Retry-After": str(retry_after)},
                limit={"policy": policy.name, "max_streams_per_user": policy.max_streams_per_user},
                retry_after=retry_after,
            )
    if not held_request_take():
        if lease is not None:
            lease_release(lease)
        raise ServiceUnavailable("This server holds as many streams and waits as it may; try again shortly.")
    after = None if last_event_id == FINAL_EVENT_ID else last_event_id  # final, then requeued by staff: anew
    return JobEventStream(user=user, job=job, after=after, lease=lease)

"""What an async run tells while it runs: that it started, how far it is, and that it ended.

Progress is stored in the job's row (`Job.progress`), because every reader of a job (detail, lists, export,
webhooks) reads the row anyway: shown there it costs readers nothing. A report is one primary-key UPDATE,
guarded by the attempt that owns the job, and reports are throttled (PROGRESS_MIN_INTERVAL and
PROGRESS_MIN_STEP: at most ~2 writes a second and ~20 a run), so the cost to the database stays bounded;
each recorded report is also an event on the job's Redis stream (jobs.events) for event streams, and a
`job.progress` webhook where the submission asked for one. Sync runs report nothing: no one can watch them.
"""

import logging
import time
import uuid
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from redis.exceptions import RedisError

from jobs import queues
from jobs.events import FINAL_EVENT, PROGRESS_EVENT, STATUS_EVENT, job_event_publish
from jobs.models import Job, JobMode, JobStatus, WebhookEvent
from jobs.stop import StopSignal

logger = logging.getLogger(__name__)

PROGRESS_MESSAGE_MAX = 200
"""Characters of a progress message kept."""


def job_event_data(job: Job, *, progress: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a status or progress event says of the job (SSE `status`/`progress` data, webhook event `data`)."""
    return {"id": str(job.pk), "status": job.status, "attempts": job.attempts, "progress": progress}


def _webhook_event_send(job: Job, event: str, data: dict[str, Any], *, name: str) -> None:
    """Queue a subscribed event's webhook (best effort: the job never waits on it, a Redis error drops it)."""
    if event not in job.webhook_event_list:
        return
    msg_id = str(uuid.uuid5(job.delivery_id, name))  # the same on a retry of this event, unique per event
    try:
        queues.enqueue_webhook_event(job.pk, event=event, data=data, msg_id=msg_id)
    except RedisError:
        logger.warning("%s webhook of job %s dropped: Redis failed", event, job.pk, exc_info=True)


def job_started_announce(job: Job, *, stop: StopSignal | None = None) -> None:
    """A claimed async job runs: a `status` event (with `stop`: and the run's stop flag read in the same round trip),
    and the `job.started` webhook if subscribed."""
    data = job_event_data(job)
    job_event_publish(job.pk, STATUS_EVENT, data, stop=stop)
    _webhook_event_send(job, WebhookEvent.STARTED, data, name=f"started-{job.attempts}")


def job_requeued_announce(job: Job) -> None:
    """An async job went back on the queue for another attempt: a `status` event."""
    job_event_publish(job.pk, STATUS_EVENT, {**job_event_data(job), "status": JobStatus.QUEUED})


def job_final_announce(job: Job) -> None:
    """After the commit that made an async job final: the `final` event wakes its streams and held requests."""
    if job.mode == JobMode.ASYNC:
        data = {"id": str(job.pk), "status": job.status}
        transaction.on_commit(lambda: job_event_publish(job.pk, FINAL_EVENT, data))


class ProgressReporter:
    """RunContext.progress of one async run: records a report when the throttle lets it through."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self._last_at = time.monotonic()  # a run shorter than the interval records nothing
        self._last_fraction = 0.0

    def __call__(self, fraction: float | None, message: str) -> None:
        now = time.monotonic()
        if now - self._last_at < settings.PROGRESS_MIN_INTERVAL:
            return
        if fraction is not None:
            fraction = min(1.0, max(0.0, fraction))
            if fraction - self._last_fraction < settings.PROGRESS_MIN_STEP:
                return
            self._last_fraction = fraction
        self._last_at = now
        progress = {
            "fraction": None if fraction is None else round(fraction, 4),
            "message": message[:PROGRESS_MESSAGE_MAX],
            "updated_at": timezone.now().isoformat(),
        }
        job = self.job
        if not Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING, attempts=job.attempts).update(progress=progress):
            return  # no longer this attempt's job (reaped, canceled): nothing to tell
        job.progress = progress
        data = job_event_data(job, progress=progress)
        job_event_publish(job.pk, PROGRESS_EVENT, data)
        _webhook_event_send(job, WebhookEvent.PROGRESS, data, name=f"progress-{job.attempts}-{progress['updated_at']}")

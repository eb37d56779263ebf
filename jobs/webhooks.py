"""Webhook deliveries: per-user signing secrets, signed attempts through the SSRF guard, retries, rescue.

The first attempt is made by the job worker that finished the job, right after commit (no second queue
hop); every other attempt is one RQ job on the callbacks queue. An attempt has a total deadline; at most
CALLBACK_MAX_PER_HOST attempts run against one receiver host at a time (the others are deferred, not
counted); webhooks of jobs that cost nothing spend their owner's free-delivery budget. A failed attempt
schedules the next one on WEBHOOK_SCHEDULE with RQ's scheduler (workers run `--with-scheduler`), within
the kind's `callback_retries` and CALLBACK_MAX_AGE. The reconciler closes attempts whose worker died as
`interrupted` and carries on their schedule, and enqueues any pending delivery that lost its RQ job, so a
pending delivery always ends delivered or failed.
"""

import base64
import logging
import random
import secrets
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from functools import partial
from typing import Any, cast
from urllib.parse import urlsplit
from uuid import UUID

import httpx
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max, Q
from django.utils import timezone
from redis.exceptions import RedisError
from rest_framework.renderers import JSONRenderer
from rq.results import Result
from standardwebhooks.webhooks import Webhook

from accounts.credentials import credentials_changed
from accounts.models import RateLimitAlgorithm, User
from accounts.ratelimit import rate_limit_hit, rate_limit_state_key
from jobs import metrics, queues, ssrf
from jobs.batch_progress import BATCH_WEBHOOK_RETRIES
from jobs.billing import refund_due
from jobs.compat import COMPAT_ASYNC, CompatCallbackSerializer
from jobs.kind_settings import get_kind_settings
from jobs.leases import lease_acquire, lease_release
from jobs.models import (
    ATTEMPT_IN_PROGRESS,
    FINAL_STATUSES,
    Batch,
    CallbackAttempt,
    CallbackStatus,
    Job,
    WebhookEvent,
    WebhookSecret,
)
from jobs.selectors import job_missing
from jobs.serializers import BatchSerializer, JobSerializer
from jobsite import crypto
from jobsite.after_response import run_once_sent
from jobsite.db import insert_unless_conflict, update_then, update_where, update_where_statement
from jobsite.errors import CallbackUrlForbidden, NotRedeliverable, WebhookSecretMissing
from jobsite.process_cache import credentials_cache
from jobsite.redis import redis_key
from jobsite.tracing import extract_context, get_tracer

logger = logging.getLogger(__name__)
tracer = get_tracer()

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
"""Random bytes in a signing secret (HMAC-SHA256 key)."""


INTERRUPTED = "interrupted"
"""The error text of an attempt whose worker died before recording its outcome (closed by the reconciler)."""

WEBHOOK_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0)
"""Seconds before retry 1, 2, ... (Standard Webhooks: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h); the last step repeats.

Scaled by the kind's `callback_backoff` (1.0: as written); the kind's `callback_retries` says how many run.
"""

FREE_BUDGET_SCOPE = "webhooks-free"
"""Rate-limiter scope of the per-owner budget for webhooks of jobs that cost nothing."""

USER_AGENT = "Jobsite-webhooks/1"


def _secret_create(user_id: int) -> str:
    secret = SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()
    WebhookSecret.objects.create(user_id=user_id, secret_encrypted=crypto.encrypt(secret))
    credentials_changed()
    return secret


@transaction.atomic
def webhook_secret_rotate(*, user: User) -> str:
    """Create the user's signing secret, or rotate it: the current one keeps signing for the rotation window."""
    User.objects.select_for_update().filter(pk=user.pk).first()  # one rotation per user at a time
    now = timezone.now()
    expires_at = now + timedelta(seconds=settings.WEBHOOK_SECRET_ROTATION_WINDOW)
    WebhookSecret.objects.filter(user=user, expires_at__isnull=True).update(expires_at=expires_at)
    # The new secret makes up the cap: older rotated ones beyond it stop signing now (oldest first).
    rotated = WebhookSecret.objects.filter(user=user, expires_at__gt=now).order_by("-created_at", "-pk")
    retired = list(rotated.values_list("pk", flat=True)[settings.WEBHOOK_SECRETS_MAX_ACTIVE - 1 :])
    WebhookSecret.objects.filter(pk__in=retired).update(expires_at=now)
    return _secret_create(user.pk)  # which tells every process's cache


SecretRows = tuple[tuple[str, datetime | None], ...]
"""A user's signing secrets, decrypted, with their ends (None: the current one), newest first."""


def _secrets_unexpired(user_id: int) -> SecretRows:
    rows = WebhookSecret.objects.filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()), user_id=user_id
    ).order_by("-created_at")
    return tuple((crypto.decrypt(row.secret_encrypted), row.expires_at) for row in rows)


def _signing_now(rows: SecretRows, now: datetime) -> list[str]:
    return [secret for secret, ends in rows if ends is None or ends > now]


def webhook_secrets_active(*, user_id: int, now: datetime) -> list[str]:
    """The user's secrets that sign now, newest first, as the database has them (none created: see
    webhook_signing_secrets)."""
    return _signing_now(_secrets_unexpired(user_id), now)


def webhook_signing_secrets(*, user_id: int) -> list[str]:
    """The secrets that sign the user's webhooks, newest first; one is created if the user has none.

    Cached per process like the gate's credentials, so an attempt reads no row: a creation or rotation reaches
    every process within POLICY_CHECK_INTERVAL, and a rotated secret's end applies at use."""
    now = timezone.now()
    cached = credentials_cache.get(
        (WebhookSecret, user_id), lambda: _secrets_unexpired(user_id) or None, keep_none=False
    )
    if active := _signing_now(cached or (), now):
        return active
    with transaction.atomic():
        User.objects.select_for_update().filter(pk=user_id).first()  # another process may have created one since
        return webhook_secrets_active(user_id=user_id, now=now) or [_secret_create(user_id)]


def webhook_sign(*, secrets_: list[str], msg_id: str, timestamp: datetime, body: str) -> str:
    """The webhook-signature header: one `v1,...` per secret, space-separated (Standard Webhooks)."""
    return " ".join(Webhook(secret).sign(msg_id=msg_id, timestamp=timestamp, data=body) for secret in secrets_)


def webhook_body(job: Job) -> str:
    """The JSON a job's webhook carries: the job itself, or the original backend's shape for compat jobs."""
    serializer = CompatCallbackSerializer(job) if job.endpoint == COMPAT_ASYNC else JobSerializer(job)
    return JSONRenderer().render(serializer.data).decode()


@dataclass(frozen=True)
class _Outcome:
    status_code: int | None = None
    error: str = ""
    retryable: bool = True
    retry_after: float | None = None
    cut_short: bool = False
    """An inline attempt cut at CALLBACK_INLINE_TIMEOUT: carried on at once from the queue, no retry spent."""

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        return max(0.0, (parsedate_to_datetime(value) - timezone.now()).total_seconds())
    except (TypeError, ValueError):
        return None


def _read_capped(response: httpx.Response) -> bytes:
    """At most CALLBACK_MAX_RESPONSE_BYTES of the answer; the rest is never read."""
    received = bytearray()
    for chunk in response.iter_raw():
        received += chunk
        if len(received) >= settings.CALLBACK_MAX_RESPONSE_BYTES:
            break
    return bytes(received[: settings.CALLBACK_MAX_RESPONSE_BYTES])


class AttemptDeadlineExceeded(Exception):
    """The attempt's total deadline passed (raised from SIGALRM, wherever the attempt was blocked)."""


def _raise_deadline(signum: int, frame: object) -> None:
    raise AttemptDeadlineExceeded


@contextmanager
def _attempt_deadline(seconds: float) -> Iterator[None]:
    """Interrupt the block after `seconds` in all, even inside a blocking read of a dripping receiver.

    httpx has per-operation timeouts only, and a socket read cannot be cut short from another thread, so
    SIGALRM it is (deliveries run in a worker's main thread). RQ's own alarm (the job's time limit) is put
    back afterwards with what was left of it.
    """
    previous_handler = signal.signal(signal.SIGALRM, _raise_deadline)
    outer_left, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if outer_left:
            signal.setitimer(signal.ITIMER_REAL, max(0.001, outer_left - (time.monotonic() - started)))


def _post(url: str, body: str, headers: dict[str, str]) -> _Outcome:
    timeout = httpx.Timeout(settings.CALLBACK_READ_TIMEOUT, connect=settings.CALLBACK_CONNECT_TIMEOUT)
    try:
        with ssrf.guarded_stream("POST", url, content=body.encode(), headers=headers, timeout=timeout) as response:
            excerpt = _read_capped(response)
    except ssrf.UrlForbidden as exc:
        return _Outcome(error=f"callback_url_forbidden: {exc.reason}", retryable=False)
    except ssrf.UrlUnresolved as exc:
        return _Outcome(error=f"unresolved: {exc}")
    except httpx.TimeoutException as exc:
        return _Outcome(error=f"timeout: {type(exc).__name__}")
    except httpx.HTTPError as exc:
        return _Outcome(error=f"{type(exc).__name__}: {exc}")
    code = response.status_code
    if 200 <= code < 300:
        return _Outcome(status_code=code)
    if 300 <= code < 400:
        error = f"redirect not followed (Location: {response.headers.get('Location', '')})"
    else:
        error = f"HTTP {code}: {excerpt[:200].decode('utf-8', 'replace')}"
    return _Outcome(
        status_code=code,
        error=error,
        retryable=code != 410,
        retry_after=_retry_after_seconds(response.headers.get("Retry-After")),
    )


def _signed_headers(*, user_id: int, msg_id: str, body: str) -> dict[str, str]:
    """Standard Webhooks headers for one attempt, signed with every secret of the user's that still signs."""
    now = timezone.now()
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": webhook_sign(
            secrets_=webhook_signing_secrets(user_id=user_id), msg_id=msg_id, timestamp=now, body=body
        ),
    }


def _send(job: Job, body: str, *, inline: bool = False) -> _Outcome:
    """One signed POST, all of it (DNS, connect, headers, body) within CALLBACK_TOTAL_TIMEOUT (inline:
    CALLBACK_INLINE_TIMEOUT, then it is cut short)."""
    headers = _signed_headers(user_id=job.owner_id, msg_id=str(job.delivery_id), body=body)
    cut = inline and settings.CALLBACK_INLINE_TIMEOUT < settings.CALLBACK_TOTAL_TIMEOUT
    seconds = settings.CALLBACK_INLINE_TIMEOUT if cut else settings.CALLBACK_TOTAL_TIMEOUT
    return _post_within(job.callback_url, body, headers, seconds=seconds, cut=cut)


def _post_within(url: str, body: str, headers: dict[str, str], *, seconds: float, cut: bool = False) -> _Outcome:
    """The guarded POST under the attempt's total deadline (`cut`: an inline attempt, carried on elsewhere)."""
    try:
        with _attempt_deadline(seconds):
            return _post(url, body, headers)
    except AttemptDeadlineExceeded:
        if cut:
            return _Outcome(error=f"timeout: cut after {seconds:g} s in the job worker", cut_short=True)
        return _Outcome(error=f"timeout: no complete answer within {seconds:g} s")


def webhook_retry_delay(*, scale: float, retry_index: int, retry_after: float | None = None) -> float:
    """Seconds before retry `retry_index` (0: the first): the schedule's step plus up to 10% jitter,
    never shorter than a capped Retry-After."""
    step = WEBHOOK_SCHEDULE[min(max(0, retry_index), len(WEBHOOK_SCHEDULE) - 1)] * scale
    delay = step + random.uniform(0, step / 10)
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.CALLBACK_RETRY_AFTER_MAX))
    return delay


def _host_key(url: str) -> str:
    # Split as text: a URL the guard will refuse (odd address notations) must still get a key, not an error.
    return redis_key("callback", "host", urlsplit(url).netloc.rpartition("@")[2].lower())


def _host_slot_acquire(url: str) -> tuple[str, str] | None:
    """A slot for one attempt to the URL's host, or None while CALLBACK_MAX_PER_HOST attempts hold them.

    The lease outlives the attempt's deadline, so a worker that dies holding a slot frees it on its own.
    """
    lease_ms = int((settings.CALLBACK_TOTAL_TIMEOUT + settings.CALLBACK_INTERRUPT_MARGIN) * 1000)
    return lease_acquire(_host_key(url), slots=settings.CALLBACK_MAX_PER_HOST, lease_ms=lease_ms)


def _free_budget_wait(job: Job) -> float:
    """Seconds until the owner's free-delivery budget admits this attempt (0: admitted now, and counted).

    Every attempt of a webhook whose job costs nothing (anonymous compat, cache hits, cost-0 kinds) or was
    refunded counts: a token bucket of CALLBACK_FREE_BUDGET per CALLBACK_FREE_BUDGET_WINDOW per owner.
    """
    if job.cost > 0 and not refund_due(job):
        return 0.0
    algorithm = RateLimitAlgorithm.TOKEN_BUCKET
    decision = rate_limit_hit(
        algorithm=algorithm,
        key=rate_limit_state_key(scope=FREE_BUDGET_SCOPE, algorithm=algorithm, subject=str(job.owner_id)),
        limit=settings.CALLBACK_FREE_BUDGET,
        window=settings.CALLBACK_FREE_BUDGET_WINDOW,
        refill_rate=settings.CALLBACK_FREE_BUDGET,
    )
    return 0.0 if decision.allowed else decision.retry_after_ms / 1000


def _webhook_settle_statement(job_id: UUID, status: str) -> tuple[str, list[Any]]:
    """The job's delivery status from pending to `status` (the UPDATE and its parameters)."""
    return update_where_statement(
        Job, where={"id": job_id, "callback_status": CallbackStatus.PENDING}, values={"callback_status": status}
    )


def _webhook_settle(job_id: UUID, status: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(*_webhook_settle_statement(job_id, status))


def _give_up_at(job: Job, give_up_at: float | None) -> datetime:
    if give_up_at is not None:
        return datetime.fromtimestamp(give_up_at, UTC)
    return (job.finished_at or timezone.now()) + timedelta(seconds=settings.CALLBACK_MAX_AGE)


def webhook_deliver(*, job_id: UUID | str, n: int, retries_left: int, give_up_at: float | None = None) -> str:
    """Make delivery attempt n of a job's webhook and record it; schedule the next one or settle the status.

    `give_up_at` (epoch seconds) ends the delivery's retries; None: CALLBACK_MAX_AGE after the job finished.
    """
    job = Job.objects.filter(pk=job_id).first()
    if job is None or job.callback_status != CallbackStatus.PENDING or job.status not in FINAL_STATUSES:
        return "skipped"
    return _webhook_deliver_job(job, n=n, retries_left=retries_left, give_up=_give_up_at(job, give_up_at))


def _webhook_deliver_job(job: Job, *, n: int, retries_left: int, give_up: datetime, inline: bool = False) -> str:
    """Attempt n under the receiver host's lease; a busy host defers it (inline: hands it to the queue)."""
    slot = _host_slot_acquire(job.callback_url)
    if slot is None:
        if inline:
            queues.enqueue_webhook(job.pk, n=n, retries_left=retries_left)
            return "handed over"
        wait = settings.CALLBACK_HOST_BUSY_DELAY * random.uniform(1, 2)
        return _webhook_defer(job, n=n, retries_left=retries_left, give_up=give_up, wait=wait, why="host busy")
    try:
        wait = _free_budget_wait(job)
        if wait:
            return _webhook_defer(job, n=n, retries_left=retries_left, give_up=give_up, wait=wait, why="free budget")
        result = _webhook_attempt(job, n=n, retries_left=retries_left, give_up=give_up, inline=inline)
    finally:
        lease_release(slot)
    metrics.WEBHOOK_DELIVERIES.labels(outcome=result, attempt=str(n)).inc()
    return result


def _inline_attempt_fits() -> bool:
    """An attempt's SIGALRM deadline works in the main thread only, and must end well before RQ's own alarm."""
    if threading.current_thread() is not threading.main_thread():
        return False
    outer_left, _ = signal.getitimer(signal.ITIMER_REAL)
    return not outer_left or outer_left > settings.CALLBACK_INLINE_TIMEOUT + queues.RQ_TIMEOUT_MARGIN


def webhook_deliver_first(job: Job) -> str:
    """The first attempt of a job's webhook, by the worker that just committed the job's final state.

    It saves the callbacks queue's hop. Leases, retries and signatures are those of webhook_deliver; past
    CALLBACK_INLINE_TIMEOUT the attempt is cut and carried on at once by a callbacks worker with the full
    deadline and no retry spent, so a slow receiver holds a job worker that long at most. If the attempt cannot start here (host lease busy, Redis error, no time left under
    RQ's alarm) it goes to the callbacks queue as attempt 1, and if even that fails the reconciler finds the
    delivery pending (as after a worker killed before this call).
    """
    retries = get_kind_settings(job.kind).callback_retries
    if not _inline_attempt_fits():
        queues.enqueue_webhook_or_defer(job.pk, n=1, retries_left=retries)
        return "handed over"
    try:
        return _webhook_deliver_job(job, n=1, retries_left=retries, give_up=_give_up_at(job, None), inline=True)
    except RedisError:
        logger.warning("webhook of job %s: inline attempt failed on Redis; handed to the queue", job.pk, exc_info=True)
        queues.enqueue_webhook_or_defer(job.pk, n=1, retries_left=retries)  # skipped if the attempt was made
        return "handed over"


def _webhook_defer(job: Job, *, n: int, retries_left: int, give_up: datetime, wait: float, why: str) -> str:
    """Put attempt n back for later without counting it; past the delivery's age cap, fail it instead."""
    if timezone.now() + timedelta(seconds=wait) > give_up:
        _webhook_settle(job.pk, CallbackStatus.FAILED)
        logger.warning("webhook of job %s failed: still deferred (%s) at its age cap", job.pk, why)
        return "failed"
    queues.enqueue_webhook(
        job.pk,
        n=n,
        retries_left=retries_left,
        give_up_at=give_up.timestamp(),
        delay=wait,
        deferral=uuid.uuid4().hex[:12],
    )
    logger.info("webhook of job %s: attempt %s deferred %.2f s (%s)", job.pk, n, wait, why)
    metrics.WEBHOOK_DELIVERIES.labels(outcome="deferred", attempt=str(n)).inc()
    return "deferred"


def _webhook_attempt(job: Job, *, n: int, retries_left: int, give_up: datetime, inline: bool = False) -> str:
    if n == 1:
        job.attempts_known_empty()  # the body is sent only if attempt 1's row is new below: it lists no attempt
    body = webhook_body(job)
    attempt = CallbackAttempt(job=job, n=n, error=ATTEMPT_IN_PROGRESS, retries_left=retries_left, give_up_at=give_up)
    if not insert_unless_conflict(attempt, unique_fields=["job", "n"]):
        return "skipped"  # another worker claimed this attempt
    started = time.perf_counter()
    attributes: dict[str, str | int] = {"job.id": str(job.pk), "webhook.attempt": n, "webhook.id": str(job.delivery_id)}
    # A child of the job's submission: every attempt lands in the job's one trace.
    with tracer.start_as_current_span("webhook.deliver", context=extract_context(job.trace_context)) as span:
        span.set_attributes(attributes)
        outcome = _send(job, body, inline=inline)
        span.set_attribute("http.response.status_code", outcome.status_code or 0)
    return _attempt_close(attempt, outcome=outcome, duration_ms=int((time.perf_counter() - started) * 1000))


@dataclass(frozen=True)
class _Step:
    """What follows an attempt: its result, the delivery status to settle (None: not yet), the next attempt."""

    result: str
    settle: str | None
    retry_delay: float | None
    retries_left: int


def _next_step(outcome: _Outcome, *, retries_left: int, retries: int, scale: float, give_up: datetime) -> _Step:
    """Delivered, failed, or retried after the schedule's next step (within `retries` and the age cap)."""
    retry_delay, left = None, retries_left - 1
    if outcome.cut_short:
        retry_delay, left = 0.0, retries_left
    elif not outcome.delivered and outcome.retryable and retries_left > 0:
        retry_delay = webhook_retry_delay(
            scale=scale, retry_index=retries - retries_left, retry_after=outcome.retry_after
        )
    if retry_delay is not None and timezone.now() + timedelta(seconds=retry_delay) > give_up:
        retry_delay = None
    if outcome.delivered:
        return _Step("delivered", CallbackStatus.DELIVERED, None, left)
    if retry_delay is not None:
        return _Step("retrying", None, retry_delay, left)
    return _Step("failed", CallbackStatus.FAILED, None, left)


def _attempt_close(attempt: CallbackAttempt, *, outcome: _Outcome, duration_ms: int) -> str:
    """Record an attempt's outcome and what follows from it (delivered, failed, or the next attempt's date).

    The attempt row and the job's callback status change in one transaction, so they never disagree; the
    row changes only while still in progress, so an outcome arriving after the reconciler closed it (as
    `interrupted`) is dropped and the schedule the reconciler started goes on.
    """
    job = attempt.job
    kind_settings = get_kind_settings(job.kind)
    step = _next_step(
        outcome,
        retries_left=attempt.retries_left,
        retries=kind_settings.callback_retries,
        scale=kind_settings.callback_backoff,
        give_up=attempt.give_up_at or _give_up_at(job, None),
    )
    result, settle, retry_delay, retries_left = step.result, step.settle, step.retry_delay, step.retries_left
    closing = {"status_code": outcome.status_code, "error": outcome.error[:255], "duration_ms": duration_ms}
    if not _attempt_close_write(attempt, closing, settle=settle):
        logger.warning("webhook of job %s: attempt %s ended after it was closed; outcome dropped", job.pk, attempt.n)
        return "late"
    if retry_delay is not None:
        queues.enqueue_webhook(
            job.pk,
            n=attempt.n + 1,
            retries_left=retries_left,
            give_up_at=attempt.give_up_at.timestamp() if attempt.give_up_at else None,
            delay=retry_delay,
        )
        logger.info(
            "webhook of job %s: attempt %s failed (%s), retry in %.2f s", job.pk, attempt.n, outcome.error, retry_delay
        )
    elif settle == CallbackStatus.FAILED:
        logger.warning("webhook of job %s failed after attempt %s: %s", job.pk, attempt.n, outcome.error)
    return result


def _attempt_close_write(attempt: CallbackAttempt, closing: dict[str, Any], *, settle: str | None) -> bool:
    """Write an attempt's outcome if it is still in progress and, with it, the job's delivery status (`settle`, if
    any): one statement on PostgreSQL, one transaction elsewhere. Whether the attempt was still in progress."""
    in_progress = {"id": attempt.pk, "error": ATTEMPT_IN_PROGRESS}
    if settle is None:  # a retry to come: the job's delivery status stays pending
        return bool(update_where(CallbackAttempt, where=in_progress, values=closing))
    if connection.vendor == "postgresql":
        closing_statement = update_where_statement(CallbackAttempt, where=in_progress, values=closing)
        return bool(update_then(closing_statement, [_webhook_settle_statement(attempt.job_id, settle)]))
    with transaction.atomic():
        closed = update_where(CallbackAttempt, where=in_progress, values=closing)
        if closed:
            _webhook_settle(attempt.job_id, settle)
    return bool(closed)


def _next_attempt_n(job_id: UUID) -> int:
    return (CallbackAttempt.objects.filter(job_id=job_id).aggregate(last=Max("n"))["last"] or 0) + 1


def webhook_delivery_restart(*, job_id: UUID) -> bool:
    """Staff action: deliver a finished job's webhook again, with a fresh retry budget and age cap."""
    job = Job.objects.filter(pk=job_id, status__in=FINAL_STATUSES).exclude(callback_url="").first()
    if job is None:
        return False
    reopened = (
        Job.objects.filter(pk=job.pk)
        .exclude(callback_status=CallbackStatus.PENDING)
        .update(callback_status=CallbackStatus.PENDING)
    )
    if not reopened:
        return False
    retries = get_kind_settings(job.kind).callback_retries
    give_up_at = time.time() + settings.CALLBACK_MAX_AGE
    n = _next_attempt_n(job.pk)
    # After the answer, if the view asked (the reconciler requeues a delivery left pending by a failed enqueue).
    run_once_sent(partial(queues.enqueue_webhook, job.pk, n=n, retries_left=retries, give_up_at=give_up_at))
    return True


def webhook_redeliver(*, user: User, job_id: UUID) -> Job:
    """The owner's redelivery of a finished job's webhook (a new attempt, fresh retries); 409 while one is pending."""
    job = Job.objects.filter(owner=user, pk=job_id).first()
    if job is None:
        raise job_missing(user=user, job_id=job_id)
    if not job.is_final:
        raise NotRedeliverable(f"The job is {job.status}; its webhook is sent when it finishes.")
    if not job.callback_url:
        raise NotRedeliverable("The job has no callback_url: there is no webhook to redeliver.")
    if not webhook_delivery_restart(job_id=job.pk):
        raise NotRedeliverable("A delivery of this webhook is still pending: wait until it is delivered or failed.")
    job.refresh_from_db()  # callback_status: pending again (the delivery is queued once the answer is sent)
    return job


def webhook_event_deliver(
    *, job_id: UUID | str, event: str, data: dict[str, Any], msg_id: str, retries_left: int
) -> str:
    """Send one subscribed event (job.started, job.progress) to the job's callback_url, signed as its final webhook.

    Best effort, apart from the final webhook's delivery (its attempts, status and log are untouched): one
    attempt under the receiver host's lease; a `job.started` event that fails (or finds the host busy) is
    retried once WEBHOOK_SCHEDULE[0] later; a `job.progress` event never is, and is dropped once the job is
    final: the next report, or the final webhook, supersedes it.
    """
    job = Job.objects.filter(pk=job_id).first()
    if job is None or (event == WebhookEvent.PROGRESS and job.is_final):
        return "skipped"
    body = JSONRenderer().render({"type": event, "timestamp": timezone.now(), "data": data}).decode()
    slot = _host_slot_acquire(job.callback_url)
    if slot is None:
        outcome = _Outcome(error="host busy")
    else:
        try:
            headers = _signed_headers(user_id=job.owner_id, msg_id=msg_id, body=body)
            outcome = _post_within(job.callback_url, body, headers, seconds=settings.CALLBACK_TOTAL_TIMEOUT)
        finally:
            lease_release(slot)
    if outcome.delivered:
        return "delivered"
    if event == WebhookEvent.STARTED and outcome.retryable and retries_left > 0:
        delay = webhook_retry_delay(scale=1.0, retry_index=0, retry_after=outcome.retry_after)
        queues.enqueue_webhook_event(
            job.pk, event=event, data=data, msg_id=msg_id, retries_left=retries_left - 1, delay=delay
        )
        return "retrying"
    logger.info("%s webhook of job %s not delivered: %s", event, job.pk, outcome.error)
    return "failed"


BATCH_EVENT_TYPE = "batch.completed"
"""The `type` of a batch's event, sent once when its last job is final: `data` is the batch."""


def batch_webhook_body(batch: Batch) -> str:
    """`{type: batch.completed, timestamp, data: the batch}` (its request counts are final: no job is active)."""
    event = {"type": BATCH_EVENT_TYPE, "timestamp": batch.completed_at, "data": BatchSerializer(batch).data}
    return JSONRenderer().render(event).decode()


def batch_webhook_deliver(*, batch_id: UUID | str, n: int, retries_left: int) -> str:
    """Make delivery attempt n of a completed batch's webhook, signed, guarded and retried as a job's.

    Attempt n is claimed by moving `callback_claimed` from n-1 to n (one worker wins); its outcome is recorded
    only while no later attempt was claimed (the reconciler's, after this worker died), with the status it settles.
    """
    batch = Batch.objects.filter(pk=batch_id).first()
    if batch is None or batch.callback_status != CallbackStatus.PENDING or batch.completed_at is None:
        return "skipped"
    give_up = batch.completed_at + timedelta(seconds=settings.CALLBACK_MAX_AGE)
    slot = _host_slot_acquire(batch.callback_url)
    if slot is None:
        wait = settings.CALLBACK_HOST_BUSY_DELAY * random.uniform(1, 2)
        if timezone.now() + timedelta(seconds=wait) > give_up:
            Batch.objects.filter(pk=batch.pk, callback_status=CallbackStatus.PENDING).update(
                callback_status=CallbackStatus.FAILED
            )
            return "failed"
        queues.enqueue_batch_webhook(
            batch.pk, n=n, retries_left=retries_left, delay=wait, deferral=uuid.uuid4().hex[:12]
        )
        return "deferred"
    try:
        claimed = Batch.objects.filter(pk=batch.pk, callback_claimed=n - 1, callback_status=CallbackStatus.PENDING)
        if not claimed.update(callback_claimed=n):
            return "skipped"
        body = batch_webhook_body(batch)
        started = time.perf_counter()
        headers = _signed_headers(user_id=batch.owner_id, msg_id=str(batch.delivery_id), body=body)
        outcome = _post_within(batch.callback_url, body, headers, seconds=settings.CALLBACK_TOTAL_TIMEOUT)
    finally:
        lease_release(slot)
    duration_ms = int((time.perf_counter() - started) * 1000)
    step = _next_step(outcome, retries_left=retries_left, retries=BATCH_WEBHOOK_RETRIES, scale=1.0, give_up=give_up)
    entry = {
        "n": n,
        "at": timezone.now().isoformat(),
        "status_code": outcome.status_code,
        "error": outcome.error[:255],
        "duration_ms": duration_ms,
    }
    recorded = Batch.objects.filter(pk=batch.pk, callback_claimed=n).update(
        callback_attempts=[*batch.callback_attempts, entry], callback_status=step.settle or CallbackStatus.PENDING
    )
    if not recorded:
        return "late"
    if step.retry_delay is not None:
        queues.enqueue_batch_webhook(batch.pk, n=n + 1, retries_left=step.retries_left, delay=step.retry_delay)
    metrics.WEBHOOK_DELIVERIES.labels(outcome=step.result, attempt=str(n)).inc()
    return step.result


def batch_webhooks_requeue_lost(now: datetime) -> int:
    """Enqueue the next attempt of pending batch deliveries with no RQ job on its way (Redis lost it, a worker died)."""
    cutoff = now - timedelta(seconds=settings.CALLBACK_RECONCILE_GRACE)
    stuck = Batch.objects.filter(callback_status=CallbackStatus.PENDING, completed_at__lt=cutoff)
    requeued = 0
    for batch in stuck.only("pk", "callback_claimed").iterator():
        if queues.webhook_is_on_its_way(batch.pk):
            continue
        retries_left = BATCH_WEBHOOK_RETRIES - batch.callback_claimed
        if retries_left < 0:
            Batch.objects.filter(pk=batch.pk, callback_status=CallbackStatus.PENDING).update(
                callback_status=CallbackStatus.FAILED
            )
            continue
        queues.enqueue_batch_webhook(batch.pk, n=batch.callback_claimed + 1, retries_left=retries_left)
        requeued += 1
    return requeued


TEST_EVENT_TYPE = "webhook.test"
"""The `type` of a test event: a receiver tells it from a job's webhook (whose body is the job itself)."""

TEST_EVENT_WAIT_MARGIN = 2.0
"""Seconds a test request waits past the attempt's deadline: a callbacks worker's pick-up and the answer's way back."""

TEST_EVENT_POLL_FIRST = 0.01
"""Seconds before the first look at the test event's outcome; doubled up to TEST_EVENT_POLL_MAX."""
TEST_EVENT_POLL_MAX = 0.2


def webhook_test_deliver(*, user_id: int, url: str, msg_id: str) -> dict[str, Any]:
    """Send one signed test event to the URL as a delivery attempt is sent (guarded POST, total deadline), once.

    Runs in a callbacks worker: the attempt's deadline is SIGALRM, which needs a main thread.
    """
    event = {"type": TEST_EVENT_TYPE, "timestamp": timezone.now(), "data": {"webhook_id": msg_id, "url": url}}
    body = JSONRenderer().render(event).decode()
    started = time.perf_counter()
    outcome = _post_within(
        url, body, _signed_headers(user_id=user_id, msg_id=msg_id, body=body), seconds=settings.CALLBACK_TOTAL_TIMEOUT
    )
    return _test_event_result(msg_id, outcome, duration_ms=int((time.perf_counter() - started) * 1000))


def _test_event_result(msg_id: str, outcome: _Outcome | None, *, duration_ms: int | None = None) -> dict[str, Any]:
    """What the caller is told about a test event; no outcome: it was still being sent."""
    if outcome is None:
        status = CallbackStatus.PENDING
    else:
        status = CallbackStatus.DELIVERED if outcome.delivered else CallbackStatus.FAILED
    return {
        "webhook_id": msg_id,
        "status": status,
        "delivered": status == CallbackStatus.DELIVERED,
        "status_code": outcome.status_code if outcome else None,
        "error": outcome.error if outcome else "",
        "duration_ms": duration_ms,
    }


def webhook_test_send(*, user: User, url: str) -> dict[str, Any]:
    """Have a callbacks worker send a signed test event to the URL; its outcome, or `pending` past the deadline.

    The URL is checked as a callback_url is at submission; the worker's guarded POST checks it again.
    """
    try:
        ssrf.check_url(url, allow_unresolved=True)
    except ssrf.UrlForbidden as exc:
        raise CallbackUrlForbidden(exc.reason) from None
    if not webhook_secrets_active(user_id=user.pk, now=timezone.now()):
        raise WebhookSecretMissing(
            "You have no webhook signing secret yet: create one with POST /api/v1/me/webhook-secret/ "
            "(your receiver verifies with it), then send the test event again."
        )
    msg_id = str(uuid.uuid4())
    rq_job = queues.enqueue_webhook_test(user_id=user.pk, url=url, msg_id=msg_id)
    deadline = time.monotonic() + settings.CALLBACK_TOTAL_TIMEOUT + TEST_EVENT_WAIT_MARGIN
    pause = TEST_EVENT_POLL_FIRST
    while (result := rq_job.latest_result()) is None and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(pause, left))
        pause = min(pause * 2, TEST_EVENT_POLL_MAX)
    if result is None:
        return _test_event_result(msg_id, None)
    if result.type == Result.Type.SUCCESSFUL:
        return cast(dict[str, Any], result.return_value)  # what webhook_test_deliver returned
    logger.warning("webhook test event %s: the worker failed: %s", msg_id, result.exc_string)
    return _test_event_result(msg_id, _Outcome(error="the worker could not send the event", retryable=False))


def _webhooks_close_interrupted(now: datetime) -> int:
    """Close attempts still in progress past their deadline plus a margin: their worker died mid-delivery."""
    lost_before = now - timedelta(seconds=settings.CALLBACK_TOTAL_TIMEOUT + settings.CALLBACK_INTERRUPT_MARGIN)
    closed = 0
    interrupted = CallbackAttempt.objects.filter(error=ATTEMPT_IN_PROGRESS, at__lt=lost_before).order_by("at")
    for attempt in interrupted.select_related("job"):
        duration_ms = int((now - attempt.at).total_seconds() * 1000)
        outcome = _Outcome(error=INTERRUPTED)
        if _attempt_close(attempt, outcome=outcome, duration_ms=duration_ms) != "late":
            metrics.WEBHOOK_DELIVERIES.labels(outcome=INTERRUPTED, attempt=str(attempt.n)).inc()
            closed += 1
    return closed


def _webhooks_requeue_lost(now: datetime) -> int:
    """Enqueue pending deliveries with no attempt in progress and no RQ job on its way (Redis lost it)."""
    cutoff = now - timedelta(seconds=settings.CALLBACK_RECONCILE_GRACE)
    stuck = (
        Job.objects.filter(callback_status=CallbackStatus.PENDING, status__in=FINAL_STATUSES, finished_at__lt=cutoff)
        .exclude(callback_attempts__error=ATTEMPT_IN_PROGRESS)
        .annotate(last_at=Max("callback_attempts__at"))
        .filter(Q(last_at__isnull=True) | Q(last_at__lt=cutoff))
    )
    requeued = 0
    for job in stuck.iterator():
        if queues.webhook_is_on_its_way(job.pk):
            continue
        last = CallbackAttempt.objects.filter(job=job).order_by("-n").first()
        if last is None:
            queues.enqueue_webhook(job.pk, n=1, retries_left=get_kind_settings(job.kind).callback_retries)
        else:
            give_up_at = last.give_up_at.timestamp() if last.give_up_at else None
            queues.enqueue_webhook(
                job.pk, n=last.n + 1, retries_left=max(0, last.retries_left - 1), give_up_at=give_up_at
            )
        requeued += 1
    return requeued


def webhooks_reconcile(*, now: datetime | None = None) -> dict[str, int]:
    """Close attempts whose worker died (their schedule goes on), and enqueue deliveries that lost their RQ job."""
    now = now or timezone.now()
    report = {
        "callbacks_interrupted": _webhooks_close_interrupted(now),
        "callbacks_requeued": _webhooks_requeue_lost(now),
    }
    if any(report.values()):
        logger.warning("reconciler: %s", report)
    return report

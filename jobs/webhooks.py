"""Webhook deliveries: per-user signing secrets, signed attempts through the SSRF guard, retries, rescue.

One delivery attempt is one RQ job on the callbacks queue. A failed attempt schedules the next one with
RQ's scheduler (workers run `--with-scheduler`); the reconciler enqueues any pending delivery that lost
its RQ job, so a pending delivery always ends delivered or failed.
"""

import base64
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from uuid import UUID

import httpx
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max, Q
from django.utils import timezone
from rest_framework.renderers import JSONRenderer
from standardwebhooks.webhooks import Webhook

from accounts.models import User
from jobs import metrics, queues, ssrf
from jobs.compat import COMPAT_ASYNC, CompatCallbackSerializer
from jobs.models import FINAL_STATUSES, CallbackAttempt, CallbackStatus, Job, WebhookSecret
from jobs.policies import get_kind_settings
from jobs.retries import backoff_with_jitter
from jobs.serializers import JobSerializer
from jobsite import crypto
from jobsite.tracing import extract_context, get_tracer

logger = logging.getLogger(__name__)
tracer = get_tracer()

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
"""Random bytes in a signing secret (HMAC-SHA256 key)."""

IN_PROGRESS = "in progress"
"""The error text of an attempt that has been claimed and not yet finished."""

USER_AGENT = "Jobsite-webhooks/1"


def _secret_create(user: User) -> str:
    secret = SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()
    WebhookSecret.objects.create(user=user, secret_encrypted=crypto.encrypt(secret))
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
    return _secret_create(user)


def _active_secrets(user_id: int, now: datetime) -> list[str]:
    rows = WebhookSecret.objects.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now), user_id=user_id)
    return [crypto.decrypt(row.secret_encrypted) for row in rows.order_by("-created_at")]


def webhook_signing_secrets(*, user: User) -> list[str]:
    """The secrets that sign the user's webhooks, newest first; one is created if the user has none."""
    now = timezone.now()
    active = _active_secrets(user.pk, now)
    if active:
        return active
    with transaction.atomic():
        User.objects.select_for_update().filter(pk=user.pk).first()
        return _active_secrets(user.pk, now) or [_secret_create(user)]


def webhook_sign(*, secrets_: list[str], msg_id: str, timestamp: datetime, body: str) -> str:
    """The webhook-signature header: one `v1,...` per secret, space-separated (Standard Webhooks)."""
    return " ".join(Webhook(secret).sign(msg_id=msg_id, timestamp=timestamp, data=body) for secret in secrets_)


def callback_body(job: Job) -> str:
    """The JSON a job's webhook carries: the job itself, or the original backend's shape for compat jobs."""
    serializer = CompatCallbackSerializer(job) if job.endpoint == COMPAT_ASYNC else JobSerializer(job)
    return JSONRenderer().render(serializer.data).decode()


@dataclass(frozen=True)
class _Outcome:
    status_code: int | None = None
    error: str = ""
    retryable: bool = True
    retry_after: float | None = None

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


def _read_capped(response: httpx.Response, deadline: float) -> bytes:
    """At most CALLBACK_MAX_RESPONSE_BYTES of the answer, before the deadline; the rest is never read."""
    received = bytearray()
    for chunk in response.iter_raw():
        received += chunk
        if len(received) >= settings.CALLBACK_MAX_RESPONSE_BYTES or time.monotonic() > deadline:
            break
    return bytes(received[: settings.CALLBACK_MAX_RESPONSE_BYTES])


def _send(job: Job, body: str) -> _Outcome:
    now = timezone.now()
    msg_id = str(job.delivery_id)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": webhook_sign(
            secrets_=webhook_signing_secrets(user=job.owner), msg_id=msg_id, timestamp=now, body=body
        ),
    }
    timeout = httpx.Timeout(settings.CALLBACK_READ_TIMEOUT, connect=settings.CALLBACK_CONNECT_TIMEOUT)
    deadline = time.monotonic() + settings.CALLBACK_TOTAL_TIMEOUT
    try:
        with ssrf.guarded_stream(
            "POST", job.callback_url, content=body.encode(), headers=headers, timeout=timeout
        ) as response:
            excerpt = _read_capped(response, deadline)
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


def _backoff_seconds(*, base: float, retry_index: int, retry_after: float | None) -> float:
    """Exponential backoff with jitter, never shorter than a capped Retry-After."""
    delay = backoff_with_jitter(base=base, retry_index=retry_index, ceiling=settings.CALLBACK_BACKOFF_MAX)
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.CALLBACK_RETRY_AFTER_MAX))
    return delay


def _callback_settle(job_id: UUID, status: str) -> None:
    Job.objects.filter(pk=job_id, callback_status=CallbackStatus.PENDING).update(callback_status=status)


def callback_deliver(*, job_id: UUID | str, n: int, retries_left: int) -> str:
    """Make delivery attempt n of a job's webhook and record it; schedule the next one or settle the status."""
    job = Job.objects.select_related("owner").filter(pk=job_id).first()
    if job is None or job.callback_status != CallbackStatus.PENDING or job.status not in FINAL_STATUSES:
        return "skipped"
    body = callback_body(job)
    try:
        with transaction.atomic():
            attempt = CallbackAttempt.objects.create(job=job, n=n, error=IN_PROGRESS)
    except IntegrityError:
        return "skipped"  # another worker claimed this attempt
    started = time.perf_counter()
    attributes = {"job.id": str(job.pk), "webhook.attempt": n, "webhook.id": str(job.delivery_id)}
    # A child of the job's submission: every attempt lands in the job's one trace.
    with tracer.start_as_current_span("webhook.deliver", context=extract_context(job.trace_context)) as span:
        span.set_attributes(attributes)
        outcome = _send(job, body)
        span.set_attribute("http.response.status_code", outcome.status_code or 0)
    attempt.status_code = outcome.status_code
    attempt.error = outcome.error[:255]
    attempt.duration_ms = int((time.perf_counter() - started) * 1000)
    attempt.save(update_fields=["status_code", "error", "duration_ms"])
    result = _callback_next(job, n=n, retries_left=retries_left, outcome=outcome)
    metrics.WEBHOOK_DELIVERIES.labels(outcome=result, attempt=str(n)).inc()
    return result


def _callback_next(job: Job, *, n: int, retries_left: int, outcome: _Outcome) -> str:
    """After an attempt: settle the delivery, or schedule the next attempt."""
    if outcome.delivered:
        _callback_settle(job.pk, CallbackStatus.DELIVERED)
        return "delivered"
    if outcome.retryable and retries_left > 0:
        kind_settings = get_kind_settings(job.kind)
        delay = _backoff_seconds(
            base=kind_settings.callback_backoff,
            retry_index=max(0, kind_settings.callback_retries - retries_left),
            retry_after=outcome.retry_after,
        )
        queues.enqueue_callback(job.pk, n=n + 1, retries_left=retries_left - 1, delay=delay)
        logger.info("webhook of job %s: attempt %s failed (%s), retry in %.2f s", job.pk, n, outcome.error, delay)
        return "retrying"
    _callback_settle(job.pk, CallbackStatus.FAILED)
    logger.warning("webhook of job %s failed after attempt %s: %s", job.pk, n, outcome.error)
    return "failed"


def _next_attempt_n(job_id: UUID) -> int:
    return (CallbackAttempt.objects.filter(job_id=job_id).aggregate(last=Max("n"))["last"] or 0) + 1


def callback_redeliver(*, job_id: UUID) -> bool:
    """Staff action: deliver a finished job's webhook again, with a fresh retry budget."""
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
    queues.enqueue_callback(job.pk, n=_next_attempt_n(job.pk), retries_left=retries)
    return True


def callbacks_reconcile(*, now: datetime | None = None) -> dict[str, int]:
    """Enqueue pending deliveries whose RQ job was lost (Redis flushed, worker killed) for one last attempt."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.CALLBACK_RECONCILE_GRACE)
    stuck = (
        Job.objects.filter(callback_status=CallbackStatus.PENDING, status__in=FINAL_STATUSES, finished_at__lt=cutoff)
        .annotate(last_n=Max("callback_attempts__n"), last_at=Max("callback_attempts__at"))
        .filter(Q(last_at__isnull=True) | Q(last_at__lt=cutoff))
    )
    report = {"callbacks_requeued": 0}
    for job_id, last_n in stuck.values_list("pk", "last_n").iterator():
        last_n = last_n or 0
        if any(queues.is_pending_in_rq(queues.callback_rq_id(job_id, n)) for n in (last_n, last_n + 1)):
            continue
        queues.enqueue_callback(job_id, n=last_n + 1, retries_left=0)
        report["callbacks_requeued"] += 1
    if report["callbacks_requeued"]:
        logger.warning("reconciler: %s", report)
    return report

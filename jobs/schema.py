"""OpenAPI 3.1 `webhooks`: what Jobsite POSTs to a job's callback_url, signed per Standard Webhooks."""

from drf_spectacular.utils import OpenApiResponse, OpenApiWebhook, extend_schema
from rest_framework import serializers
from rest_framework.serializers import Serializer

from jobs.compat import CompatCallbackSerializer
from jobs.serializers import BatchSerializer, JobSerializer, JobWebhookEventSerializer
from jobs.webhooks import BATCH_EVENT_TYPE

SIGNATURE_HEADERS = """

Headers (Standard Webhooks; drf-spectacular lists no parameters for webhooks, so they are described here):
- `webhook-id`: the job's delivery id, the same on every retry; deduplicate on it.
- `webhook-timestamp`: Unix seconds when this attempt was signed; refuse old ones (replay protection).
- `webhook-signature`: `v1,<base64 HMAC-SHA256>` over `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the
  base64-decoded part of your `whsec_...` secret after `whsec_`; space-separated, one per active secret while
  a rotation overlaps. The `standardwebhooks` library verifies it given the `whsec_...` secret as printed."""

RETRIES = (
    " Anything but 2xx or 410 (3xx, timeouts, refused connections included) is retried with exponential backoff"
    " and jitter, honouring `Retry-After`; redirects are never followed."
)

RECEIVER_RESPONSES = {
    200: OpenApiResponse(description="Any 2xx: delivered."),
    410: OpenApiResponse(description="Gone: stop retrying this delivery."),
}


def _webhook(
    name: str, *, summary: str, body: str, request: type[Serializer], retries: str = RETRIES
) -> OpenApiWebhook:
    decorator = extend_schema(
        summary=summary, description=body + retries + SIGNATURE_HEADERS, request=request, responses=RECEIVER_RESPONSES
    )
    return OpenApiWebhook(name=name, decorator=decorator)


JOB_FINISHED = _webhook(
    "jobFinished",
    summary="An async job with a callback_url reached its final status",
    body="The body is the job as `GET /api/v1/jobs/{id}/` shows it.",
    request=JobSerializer,
)

EVENT_BODY = (
    " Sent only where the submission's `webhook_events` names it, best effort and never delaying the job; it"
    " may arrive after the final webhook, which alone is authoritative. `webhook-id` is unique per event."
)

JOB_STARTED = _webhook(
    "jobStarted",
    summary="An async job subscribed to `job.started` began an attempt",
    body="`type: job.started`, `data`: the job's id, status (`running`), attempt and progress." + EVENT_BODY,
    request=JobWebhookEventSerializer,
    retries=" A failed delivery (anything but 2xx or 410) is retried once, 5 s later.",
)

JOB_PROGRESS = _webhook(
    "jobProgress",
    summary="An async job subscribed to `job.progress` reported progress (throttled)",
    body="`type: job.progress`, `data`: the job's id, status, attempt and progress." + EVENT_BODY,
    request=JobWebhookEventSerializer,
    retries=" Never retried, and dropped once the job is final: the next report, or the final webhook, supersedes it.",
)

COMPAT_REQUEST_FINISHED = _webhook(
    "compatRequestFinished",
    summary="A request of `POST /async` (compatible route) finished",
    body="The original backend's callback body.",
    request=CompatCallbackSerializer,
)


class BatchCompletedEventSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=[BATCH_EVENT_TYPE])
    timestamp = serializers.DateTimeField(help_text="When the batch's last job became final.")
    data = BatchSerializer()  # type: ignore[assignment]  # a field: DRF's metaclass leaves the property


BATCH_COMPLETED = _webhook(
    "batchCompleted",
    summary="Every job of a batch with a callback_url is final (one event per batch)",
    body="The body is `{type: batch.completed, timestamp, data}`, `data` the batch as `GET /api/v1/batches/{id}/` "
    "shows it; `webhook-id` is the batch's `callback.webhook_id`.",
    request=BatchCompletedEventSerializer,
)

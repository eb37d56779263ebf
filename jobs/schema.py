"""OpenAPI 3.1 `webhooks`: what Jobsite POSTs to a job's callback_url, signed per Standard Webhooks."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, OpenApiWebhook, extend_schema

from jobs.compat import CompatCallbackSerializer
from jobs.serializers import JobSerializer

SIGNATURE_HEADERS = [
    OpenApiParameter(
        "webhook-id", OpenApiTypes.UUID, OpenApiParameter.HEADER, required=True,
        description="The job's delivery id, the same on every retry: deduplicate on it.",
    ),
    OpenApiParameter(
        "webhook-timestamp", OpenApiTypes.INT, OpenApiParameter.HEADER, required=True,
        description="Unix seconds when this attempt was signed; refuse old ones (replay protection).",
    ),
    OpenApiParameter(
        "webhook-signature", OpenApiTypes.STR, OpenApiParameter.HEADER, required=True,
        description="`v1,<base64 HMAC-SHA256>` over `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the "
        "base64-decoded part of your `whsec_...` secret; space-separated, one per active secret while rotating.",
    ),
]  # fmt: skip

RECEIVER_RESPONSES = {
    200: OpenApiResponse(description="Any 2xx: delivered."),
    410: OpenApiResponse(description="Gone: stop retrying this delivery."),
}

JOB_FINISHED = OpenApiWebhook(
    name="jobFinished",
    decorator=extend_schema(
        summary="An async job with a callback_url reached its final status",
        description="The body is the job as `GET /api/v1/jobs/{id}/` shows it. Anything but 2xx or 410 (3xx, "
        "timeouts, refused connections included) is retried with exponential backoff and jitter, honouring "
        "`Retry-After`; redirects are never followed.",
        parameters=SIGNATURE_HEADERS,
        request=JobSerializer,
        responses=RECEIVER_RESPONSES,
    ),
)

COMPAT_REQUEST_FINISHED = OpenApiWebhook(
    name="compatRequestFinished",
    decorator=extend_schema(
        summary="A request of `POST /async` (compatible route) finished",
        description="The original backend's callback body, signed and retried like jobFinished.",
        parameters=SIGNATURE_HEADERS,
        request=CompatCallbackSerializer,
        responses=RECEIVER_RESPONSES,
    ),
)

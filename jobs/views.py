"""Thin views: validate, call one service or selector, serialise."""

import hashlib
import re
from collections.abc import Callable
from functools import partial
from typing import Any
from uuid import UUID

from django.http import StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.utils.cache import patch_vary_headers
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import status
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response

from accounts.api import EndpointView
from accounts.endpoints import Endpoint
from accounts.requests import AuthenticatedRequest
from jobs.events import PROGRESS_EVENT, STATUS_EVENT
from jobs.export import export_chunks, export_csv, export_jsonl
from jobs.idempotency import (
    KEY_HEADER,
    KEY_MAX_LENGTH,
    KEY_PATTERN,
    idempotency_answered_response,
    idempotent_response,
)
from jobs.kind_settings import get_kind_settings
from jobs.limits import caller_limits
from jobs.models import Job, JobMode, JobStatus
from jobs.pipeline import job_submit
from jobs.selectors import job_await, job_get_or_raise, job_list, webhook_delivery_list
from jobs.serializers import (
    ExportQuerySerializer,
    JobListQuerySerializer,
    JobRequestSerializer,
    JobSerializer,
    LimitsSerializer,
    WebhookDeliveryQuerySerializer,
    WebhookDeliverySerializer,
    WebhookSecretSerializer,
    WebhookTestRequestSerializer,
    WebhookTestResultSerializer,
    job_request_schema,
)
from jobs.services import job_cancel
from jobs.streams import JOB_EVENT, LAST_EVENT_ID_PATTERN, job_event_stream_open
from jobs.webhooks import webhook_redeliver, webhook_secret_rotate, webhook_test_send
from jobsite.after_response import send_response_first
from jobsite.api import BODY_STATUSES, GATE_STATUSES, NewestFirstPagination, PageQuerySerializer, paginated, problems
from jobsite.errors import InvalidInput

IDEMPOTENCY_KEY_PARAMETER = OpenApiParameter(
    KEY_HEADER,
    {"type": "string", "pattern": KEY_PATTERN, "maxLength": KEY_MAX_LENGTH},
    OpenApiParameter.HEADER,
    description="Same key and body within the policy's TTL replays the first response (Idempotent-Replayed: true); "
    "the same key with another body: 422 idempotency_key_reused; while the first runs: 409 idempotency_in_flight.",
)

SUBMIT_STATUSES = (*GATE_STATUSES, *BODY_STATUSES, 402, 409, 422)
"""A submission can also be refused for credits, an idempotency key in flight or reused."""

UPLOAD_INPUT_STATUSES = (404,)
"""An input's `upload_id` that names no upload of the caller's (incomplete: 409, too large: 413, as above)."""

PREFER_PARAMETER = OpenApiParameter(
    "Prefer",
    {"type": "string", "pattern": r"^.{0,200}$"},
    OpenApiParameter.HEADER,
    description="RFC 7240 `wait=N`: hold the request up to N seconds (capped by the policy's max_wait_seconds) "
    "for the job to finish; the wait applied is answered in `Preference-Applied`. Other preferences are ignored.",
)

DELIVERY_RETRY_AFTER = 1
"""Retry-After of a redelivery's 202: seconds a delivery attempt usually takes to answer."""


def prefer_wait(header: str) -> int | None:
    """The seconds of RFC 7240's `wait` preference, if the Prefer header states one (the first one counts);
    malformed preferences are ignored, as the RFC asks."""
    for preference in header.split(","):
        name, _, value = preference.split(";", 1)[0].partition("=")
        if name.strip().lower() == "wait":
            value = value.strip().strip('"')
            return int(value) if re.fullmatch(r"[0-9]{1,9}", value) else None
    return None


def _wait_seconds(request: AuthenticatedRequest) -> int:
    """How long the request is held for its job to finish: its Prefer wait up to the policy's max (0: not held)."""
    wait = prefer_wait(request.headers.get("Prefer", ""))
    return 0 if wait is None else min(wait, request.policy.max_wait_seconds)


def _held_job(request: AuthenticatedRequest, job: Job) -> tuple[Job, dict[str, str]]:
    """The job after the wait its request prefers (if any), and the headers saying what was applied."""
    seconds = _wait_seconds(request)
    if seconds <= 0:
        return job, {}
    job, applied = job_await(user=request.user, job=job, seconds=seconds)
    return job, {"Preference-Applied": f"wait={seconds}"} if applied else {}


def _retry_after(job: Job) -> dict[str, str]:
    """When to look at an unfinished job again: its kind's typical run time (KindSettings, cached per process)."""
    return {"Retry-After": str(max(1, get_kind_settings(job.kind).typical_run_seconds))}


def _stored_or(job: Job, render_job: Callable[[Job], Response]) -> Response:
    """The response its Idempotency-Key stored with the job (jobs.idempotency.KeyWrite), sent as stored; else rendered."""
    stored = idempotency_answered_response(job)
    return stored if stored is not None else render_job(job)


def _varying_on_prefer(response: Response) -> Response:
    patch_vary_headers(response, ["Prefer"])
    return response


class JobSubmitView(EndpointView):
    mode: str

    def post(self, request: AuthenticatedRequest) -> Response:
        envelope = JobRequestSerializer(data=request.data, context={"mode": self.mode})
        envelope.is_valid(raise_exception=True)
        submit = partial(
            job_submit,
            user=request.user,
            policy=request.policy,
            kind_name=envelope.validated_data["kind"],
            params=envelope.validated_data["input"],
            mode=self.mode,
            callback_url=envelope.validated_data.get("callback_url", ""),
            run_at=envelope.validated_data.get("run_at"),
            depends_on=envelope.validated_data.get("depends_on", ()),
            allow_dependency_failure=envelope.validated_data.get("allow_dependency_failure", False),
            priority=envelope.validated_data.get("priority"),
            webhook_events=envelope.validated_data.get("webhook_events", []),
        )
        return idempotent_response(
            request=request,
            policy=request.policy,
            run=lambda: self.submitted_response(request, submit()),
            render_job=self.job_response,
            answered_on_acceptance=self.answered_on_acceptance(request),
            claim_on_acceptance=True,
        )

    def answered_on_acceptance(self, request: AuthenticatedRequest) -> bool:
        """Whether the answer is job_response of the job as accepted (a sync job's is its outcome)."""
        return False

    def submitted_response(self, request: AuthenticatedRequest, job: Job) -> Response:
        return _stored_or(job, self.job_response)

    def job_response(self, job: Job) -> Response:
        return Response(JobSerializer(job).data, status=status.HTTP_200_OK)


@extend_schema_view(
    post=extend_schema(
        operation_id="jobs_sync",
        summary="Run a job now; the result is in the response",
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
        request=job_request_schema(JobMode.SYNC),
        responses={200: JobSerializer, **problems(*SUBMIT_STATUSES, *UPLOAD_INPUT_STATUSES, 502)},
    )
)
class JobSyncView(JobSubmitView):
    endpoint = Endpoint.JOBS_SYNC
    mode = JobMode.SYNC

    def post(self, request: AuthenticatedRequest) -> Response:
        send_response_first()  # the result's cache copy is stored once the result is sent
        return super().post(request)


@extend_schema_view(
    post=extend_schema(
        operation_id="jobs_async",
        summary="Queue a job (or hold it: run_at, depends_on); poll its Location, stream its events or receive signed "
        "webhooks; Prefer: wait=N answers 200 with the final job if it finishes within N seconds",
        parameters=[IDEMPOTENCY_KEY_PARAMETER, PREFER_PARAMETER],
        request=job_request_schema(JobMode.ASYNC),
        responses={
            200: OpenApiResponse(JobSerializer, description="Prefer: wait=N, and the job finished in time."),
            202: JobSerializer,
            **problems(*SUBMIT_STATUSES, *UPLOAD_INPUT_STATUSES),
        },
    )
)
class JobAsyncView(JobSubmitView):
    endpoint = Endpoint.JOBS_ASYNC
    mode = JobMode.ASYNC

    def answered_on_acceptance(self, request: AuthenticatedRequest) -> bool:
        return _wait_seconds(request) <= 0

    def post(self, request: AuthenticatedRequest) -> Response:
        if self.answered_on_acceptance(request):
            send_response_first()  # the job is queued once its acknowledgement is sent; a wait needs it queued
        return super().post(request)

    def submitted_response(self, request: AuthenticatedRequest, job: Job) -> Response:
        job, applied = _held_job(request, job)
        if applied and job.is_final:
            return _varying_on_prefer(Response(JobSerializer(job).data, status=status.HTTP_200_OK, headers=applied))
        response = _stored_or(job, self.job_response)
        for name, value in applied.items():
            response[name] = value
        return response

    def job_response(self, job: Job) -> Response:
        headers = {"Location": f"/api/v1/jobs/{job.id}/", **_retry_after(job)}
        return _varying_on_prefer(Response(JobSerializer(job).data, status=status.HTTP_202_ACCEPTED, headers=headers))


class JobListView(EndpointView):
    endpoint = Endpoint.JOBS_READ

    @extend_schema(
        operation_id="jobs_list",
        summary="Own jobs (staff: all), newest first",
        parameters=[JobListQuerySerializer, PageQuerySerializer],
        responses={200: paginated("PaginatedJobList", JobSerializer(many=True)), **problems(*GATE_STATUSES, 404)},
    )
    def get(self, request: AuthenticatedRequest) -> Response:
        filters = JobListQuerySerializer(data=request.query_params.dict())
        filters.is_valid(raise_exception=True)
        jobs = job_list(user=request.user, **filters.validated_data).prefetch_related("callback_attempts")
        paginator = NewestFirstPagination()
        page = paginator.paginate_queryset(jobs, request, view=self)
        return paginator.get_paginated_response(JobSerializer(page, many=True).data)


ETAG_HEX_DIGITS = 32
"""128 bits of the body's sha256: collisions out of reach, half the header of the full digest."""


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:ETAG_HEX_DIGITS] + '"'


def _etag_matches(header: str, etag: str) -> bool:
    candidates = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    return "*" in candidates or etag in candidates


class JobDetailView(EndpointView):
    endpoint = Endpoint.JOBS_READ

    @extend_schema(
        operation_id="jobs_detail",
        summary="One job with its webhook delivery attempts; ETag / If-None-Match supported; Prefer: wait=N "
        "holds the request until the job is final or N seconds passed",
        parameters=[
            OpenApiParameter("If-None-Match", str, OpenApiParameter.HEADER, description="An ETag seen before."),
            PREFER_PARAMETER,
        ],
        responses={
            200: JobSerializer,
            304: OpenApiResponse(description="Not modified"),
            **problems(*GATE_STATUSES, 404, 410),
        },
    )
    def get(self, request: AuthenticatedRequest, job_id: UUID) -> Response:
        job = job_get_or_raise(user=request.user, job_id=job_id)
        job, applied = _held_job(request, job)
        data = JobSerializer(job).data
        etag = _etag(JSONRenderer().render(data))
        if _etag_matches(request.headers.get("If-None-Match", ""), etag):
            response = Response(status=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag, **applied})
        else:
            response = Response(data, headers={"ETag": etag, **applied, **({} if job.is_final else _retry_after(job))})
        return _varying_on_prefer(response)


class EventStreamRenderer(BaseRenderer):
    """Lets `Accept: text/event-stream` (EventSource's) through content negotiation; the stream writes itself."""

    media_type = "text/event-stream"
    format = "event-stream"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        return b""


LAST_EVENT_ID_PARAMETER = OpenApiParameter(
    "Last-Event-ID",
    {"type": "string", "pattern": LAST_EVENT_ID_PATTERN},
    OpenApiParameter.HEADER,
    description="The id of the last event received (EventSource sends it when it reconnects): the stream resumes "
    "after it. `final` (the `job` event's id): 204, nothing more to send.",
)


EVENT_STREAM_SCHEMA = {
    "type": "object",
    "description": "One event: `status` and `progress` carry a JobEvent as JSON text, `job` the final Job.",
    "properties": {
        "event": {"type": "string", "enum": [STATUS_EVENT, PROGRESS_EVENT, JOB_EVENT]},
        "id": {"type": "string", "pattern": LAST_EVENT_ID_PATTERN},
        "data": {"type": "string"},
        "retry": {"type": "integer"},
    },
}
"""OpenAPI: an event of the stream (fields of the SSE format)."""


class JobEventsView(EndpointView):
    endpoint = Endpoint.JOBS_READ
    renderer_classes = [JSONRenderer, EventStreamRenderer]

    @extend_schema(
        operation_id="jobs_events",
        summary="Server-Sent Events of one job: `status`, `progress`, then `job` (the final job) and the end; "
        "a stream lasts at most STREAM_MAX_SECONDS, then ends with `retry:` (reconnect with Last-Event-ID)",
        parameters=[LAST_EVENT_ID_PARAMETER],
        responses={
            (200, "text/event-stream"): OpenApiResponse(EVENT_STREAM_SCHEMA, description="The event stream."),
            204: OpenApiResponse(description="Last-Event-ID: final; the stream has nothing more to send."),
            **problems(*GATE_STATUSES, 404),
        },
    )
    def get(self, request: AuthenticatedRequest, job_id: UUID) -> HttpResponseBase:
        last_event_id = request.headers.get("Last-Event-ID")
        if last_event_id is not None and not re.fullmatch(LAST_EVENT_ID_PATTERN, last_event_id):
            raise InvalidInput(
                [{"field": "Last-Event-ID", "message": "Not an event id this service sent."}],
                "The Last-Event-ID header is not an event id of a job stream.",
            )
        stream = job_event_stream_open(
            user=request.user, policy=request.policy, job_id=job_id, last_event_id=last_event_id
        )
        if stream is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        response = StreamingHttpResponse(stream, content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # proxies (nginx) pass each event on at once
        return response


class JobCancelView(EndpointView):
    endpoint = Endpoint.JOBS_ASYNC

    @extend_schema(
        operation_id="jobs_cancel",
        summary="Cancel a queued or held job (refunded), or ask a running async job to stop (canceling, then canceled)",
        request=None,
        responses={
            200: OpenApiResponse(JobSerializer, description="Canceled (it was queued): its credits are refunded."),
            202: OpenApiResponse(
                JobSerializer, description="Canceling: its worker stops it at its next check (no refund)."
            ),
            **problems(*GATE_STATUSES, *BODY_STATUSES, 404, 409, 410),
        },
    )
    def post(self, request: AuthenticatedRequest, job_id: UUID) -> Response:
        job = job_cancel(user=request.user, job_id=job_id)
        code = status.HTTP_202_ACCEPTED if job.status == JobStatus.CANCELING else status.HTTP_200_OK
        return Response(JobSerializer(job).data, status=code)


class JobExportView(EndpointView):
    endpoint = Endpoint.JOBS_READ

    @extend_schema(
        operation_id="jobs_export",
        summary="Stream own jobs as JSON lines or CSV",
        parameters=[ExportQuerySerializer],
        responses={
            (200, "application/x-ndjson"): OpenApiTypes.STR,
            (200, "text/csv"): OpenApiTypes.STR,
            **problems(*GATE_STATUSES),
        },
    )
    def get(self, request: AuthenticatedRequest) -> StreamingHttpResponse:
        query = ExportQuerySerializer(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        export_format = query.validated_data.pop("format")
        chunks = export_chunks(job_list(user=request.user, own_only=True, **query.validated_data))  # API.md: own jobs
        if export_format == "csv":
            response = StreamingHttpResponse(export_csv(chunks), content_type="text/csv; charset=utf-8")
            response["Content-Disposition"] = 'attachment; filename="jobs.csv"'
        else:
            response = StreamingHttpResponse(export_jsonl(chunks), content_type="application/x-ndjson")
            response["Content-Disposition"] = 'attachment; filename="jobs.jsonl"'
        return response


class WebhookSecretView(EndpointView):
    """An account write like the /me ones: governed by the `account.write` policy."""

    endpoint = Endpoint.ACCOUNT_WRITE

    @extend_schema(
        operation_id="me_webhook_secret",
        summary="Create or rotate the webhook signing secret; the old one keeps signing for 24 h",
        request=None,
        responses={201: WebhookSecretSerializer, **problems(*GATE_STATUSES, *BODY_STATUSES)},
    )
    def post(self, request: AuthenticatedRequest) -> Response:
        secret = webhook_secret_rotate(user=request.user)
        return Response(WebhookSecretSerializer({"secret": secret}).data, status=status.HTTP_201_CREATED)


class WebhookTestView(EndpointView):
    endpoint = Endpoint.WEBHOOKS_TEST

    @extend_schema(
        operation_id="me_webhooks_test",
        summary="Send a signed test event to a URL (as deliveries are sent) and answer how it went",
        request=WebhookTestRequestSerializer,
        responses={
            200: WebhookTestResultSerializer,
            202: OpenApiResponse(WebhookTestResultSerializer, description="Still being sent when the wait ended."),
            **problems(*GATE_STATUSES, *BODY_STATUSES, 409),
        },
    )
    def post(self, request: AuthenticatedRequest) -> Response:
        body = WebhookTestRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        outcome = webhook_test_send(user=request.user, url=body.validated_data["url"])
        code = status.HTTP_202_ACCEPTED if outcome["status"] == "pending" else status.HTTP_200_OK
        return Response(WebhookTestResultSerializer(outcome).data, status=code)


class WebhookDeliveryListView(EndpointView):
    endpoint = Endpoint.JOBS_READ

    @extend_schema(
        operation_id="me_webhook_deliveries",
        summary="Own webhook deliveries (one per job with a callback_url) with their attempts, newest first",
        parameters=[WebhookDeliveryQuerySerializer, PageQuerySerializer],
        responses={
            200: paginated("PaginatedWebhookDeliveryList", WebhookDeliverySerializer(many=True)),
            **problems(*GATE_STATUSES, 404),
        },
    )
    def get(self, request: AuthenticatedRequest) -> Response:
        filters = WebhookDeliveryQuerySerializer(data=request.query_params.dict())
        filters.is_valid(raise_exception=True)
        deliveries = webhook_delivery_list(user=request.user, **filters.validated_data)
        paginator = NewestFirstPagination()
        page = paginator.paginate_queryset(deliveries, request, view=self)
        return paginator.get_paginated_response(WebhookDeliverySerializer(page, many=True).data)


class WebhookRedeliverView(EndpointView):
    endpoint = Endpoint.JOBS_ASYNC

    @extend_schema(
        operation_id="jobs_webhook_redeliver",
        summary="Deliver a finished job's webhook again (a new attempt, fresh retries)",
        request=None,
        responses={202: JobSerializer, **problems(*GATE_STATUSES, *BODY_STATUSES, 404, 409, 410)},
    )
    def post(self, request: AuthenticatedRequest, job_id: UUID) -> Response:
        send_response_first()  # the answer shows the delivery pending; the webhook follows it
        job = webhook_redeliver(user=request.user, job_id=job_id)
        headers = {"Retry-After": str(DELIVERY_RETRY_AFTER)}
        return Response(JobSerializer(job).data, status=status.HTTP_202_ACCEPTED, headers=headers)


class LimitsView(EndpointView):
    """The caller's limits on every endpoint: what remains of each rate limit, caps in use, the balance."""

    endpoint = Endpoint.ACCOUNT_READ

    @extend_schema(
        operation_id="me_limits",
        summary="Each endpoint's rate limit (what remains, when it resets), concurrency caps in use, the balance",
        responses={200: LimitsSerializer, **problems(*GATE_STATUSES)},
    )
    def get(self, request: AuthenticatedRequest) -> Response:
        return Response(LimitsSerializer(caller_limits(request)).data)

"""Thin views: validate, call one service or selector, serialise."""

import hashlib
from functools import partial
from uuid import UUID

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import status
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from accounts.api import EndpointView
from accounts.endpoints import Endpoint
from accounts.requests import AuthenticatedRequest
from jobs.export import export_chunks, export_csv, export_jsonl
from jobs.idempotency import KEY_HEADER, KEY_MAX_LENGTH, KEY_PATTERN, idempotent_response
from jobs.limits import caller_limits
from jobs.models import Job, JobMode, JobStatus
from jobs.pipeline import job_submit
from jobs.selectors import job_get_or_raise, job_list, webhook_delivery_list
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
from jobs.webhooks import webhook_redeliver, webhook_secret_rotate, webhook_test_send
from jobsite.api import BODY_STATUSES, GATE_STATUSES, NewestFirstPagination, PageQuerySerializer, paginated, problems

IDEMPOTENCY_KEY_PARAMETER = OpenApiParameter(
    KEY_HEADER,
    {"type": "string", "pattern": KEY_PATTERN, "maxLength": KEY_MAX_LENGTH},
    OpenApiParameter.HEADER,
    description="Same key and body within the policy's TTL replays the first response (Idempotent-Replayed: true); "
    "the same key with another body: 422 idempotency_key_reused; while the first runs: 409 idempotency_in_flight.",
)

SUBMIT_STATUSES = (*GATE_STATUSES, *BODY_STATUSES, 402, 409, 422)
"""A submission can also be refused for credits, an idempotency key in flight or reused."""


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
        )
        return idempotent_response(
            request=request,
            policy=request.policy,
            run=lambda: self.job_response(submit()),
            render_job=self.job_response,
        )

    def job_response(self, job: Job) -> Response:
        return Response(JobSerializer(job).data, status=status.HTTP_200_OK)


@extend_schema_view(
    post=extend_schema(
        operation_id="jobs_sync",
        summary="Run a job now; the result is in the response",
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
        request=job_request_schema(JobMode.SYNC),
        responses={200: JobSerializer, **problems(*SUBMIT_STATUSES, 502)},
    )
)
class JobSyncView(JobSubmitView):
    endpoint = Endpoint.JOBS_SYNC
    mode = JobMode.SYNC


@extend_schema_view(
    post=extend_schema(
        operation_id="jobs_async",
        summary="Queue a job (or hold it: run_at, depends_on); poll its Location or receive a signed webhook",
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
        request=job_request_schema(JobMode.ASYNC),
        responses={202: JobSerializer, **problems(*SUBMIT_STATUSES)},
    )
)
class JobAsyncView(JobSubmitView):
    endpoint = Endpoint.JOBS_ASYNC
    mode = JobMode.ASYNC

    def job_response(self, job: Job) -> Response:
        return Response(
            JobSerializer(job).data,
            status=status.HTTP_202_ACCEPTED,
            headers={"Location": f"/api/v1/jobs/{job.id}/"},
        )


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
        summary="One job with its webhook delivery attempts; ETag / If-None-Match supported",
        parameters=[
            OpenApiParameter("If-None-Match", str, OpenApiParameter.HEADER, description="An ETag seen before.")
        ],
        responses={
            200: JobSerializer,
            304: OpenApiResponse(description="Not modified"),
            **problems(*GATE_STATUSES, 404, 410),
        },
    )
    def get(self, request: AuthenticatedRequest, job_id: UUID) -> Response:
        job = job_get_or_raise(user=request.user, job_id=job_id)
        data = JobSerializer(job).data
        etag = _etag(JSONRenderer().render(data))
        if _etag_matches(request.headers.get("If-None-Match", ""), etag):
            return Response(status=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag})
        return Response(data, headers={"ETag": etag})


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
        job = webhook_redeliver(user=request.user, job_id=job_id)
        return Response(JobSerializer(job).data, status=status.HTTP_202_ACCEPTED)


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

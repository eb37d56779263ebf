"""Thin views of batches and uploads: validate, call one service or selector, serialise."""

from typing import Any
from uuid import UUID

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import status
from rest_framework.response import Response

from accounts.api import EndpointView
from accounts.endpoints import Endpoint
from accounts.requests import AuthenticatedRequest
from jobs.batches import batch_cancel, batch_requests_validate, batch_results_jsonl, batch_submit, batch_submit_upload
from jobs.idempotency import idempotent_response
from jobs.models import Batch, Job, JobStatus
from jobs.selectors import batch_active_counts, batch_get, batch_jobs, batch_list
from jobs.serializers import (
    BATCH_REQUEST_SCHEMA,
    BatchCreatedSerializer,
    BatchJobSerializer,
    BatchSerializer,
    UploadSerializer,
    batch_request_validate,
)
from jobs.uploads import upload_append, upload_create, upload_get
from jobs.views import IDEMPOTENCY_KEY_PARAMETER, SUBMIT_STATUSES
from jobsite.api import BODY_STATUSES, GATE_STATUSES, NewestFirstPagination, PageQuerySerializer, paginated, problems
from jobsite.errors import InvalidInput, NotFound, UnsupportedMediaType

UPLOAD_CONTENT_TYPE = "application/offset+octet-stream"
"""The media type of an upload's chunk (tus): raw bytes, not JSON."""

UPLOAD_HEADERS = {"Cache-Control": "no-store"}
"""An upload's offset changes with every chunk: never cached (tus)."""


def _serialize(
    batches: list[Batch],
    serializer: type[BatchSerializer] = BatchSerializer,
    *,
    many: bool = False,
    active: dict[UUID, dict[str, int]] | None = None,
) -> Any:
    """Batches with their queued and running counts (`active`, else one query for those not yet complete)."""
    context = {"active_counts": batch_active_counts(batches) if active is None else active}
    return serializer(batches if many else batches[0], many=many, context=context).data


def _batch_or_404(request: AuthenticatedRequest, batch_id: UUID) -> Batch:
    batch = batch_get(user=request.user, batch_id=batch_id)
    if batch is None:
        raise NotFound("No such batch.")
    return batch


@extend_schema_view(
    get=extend_schema(
        operation_id="batches_list",
        summary="Own batches, newest first",
        parameters=[PageQuerySerializer],
        responses={200: paginated("PaginatedBatchList", BatchSerializer(many=True)), **problems(*GATE_STATUSES, 404)},
    ),
    post=extend_schema(
        operation_id="batches_create",
        summary="Queue a batch of jobs (inline or from an upload), validated and charged as a whole",
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
        request=BATCH_REQUEST_SCHEMA,
        responses={202: BatchCreatedSerializer, **problems(*SUBMIT_STATUSES, 404)},
    ),
)
class BatchCollectionView(EndpointView):
    endpoint = Endpoint.JOBS_BATCH
    method_endpoints = {"GET": Endpoint.JOBS_READ}

    def get(self, request: AuthenticatedRequest) -> Response:
        paginator = NewestFirstPagination()
        page = paginator.paginate_queryset(batch_list(user=request.user), request, view=self)
        return paginator.get_paginated_response(_serialize(page or [], many=True))

    def post(self, request: AuthenticatedRequest) -> Response:
        data = batch_request_validate(request.data)
        return idempotent_response(
            request=request,
            policy=request.policy,
            run=lambda: self.accepted(self.submit(request, data)),
            render_job=self.render_job,
        )

    def submit(self, request: AuthenticatedRequest, data: dict[str, Any]) -> Batch:
        common = {
            "user": request.user,
            "policy": request.policy,
            "callback_url": data.get("callback_url", ""),
        }
        if "upload_id" in data:
            return batch_submit_upload(upload_id=data["upload_id"], **common)
        requests = batch_requests_validate(
            enumerate(data["requests"]), user=request.user, label="requests", max_jobs=request.policy.batch_max_jobs
        )
        return batch_submit(requests=requests, **common)

    def accepted(self, batch: Batch) -> Response:
        """The answer as the batch was accepted: every job queued or waiting (no query to count them)."""
        return self.created(batch, active={batch.pk: {JobStatus.QUEUED: batch.total - batch.waiting}})  # type: ignore[attr-defined]

    def created(self, batch: Batch, active: dict[UUID, dict[str, int]] | None = None) -> Response:
        return Response(
            _serialize([batch], BatchCreatedSerializer, active=active),
            status=status.HTTP_202_ACCEPTED,
            headers={"Location": f"/api/v1/batches/{batch.id}/"},
        )

    def render_job(self, job: Job) -> Response:
        """The answer a request that died would have given: its batch, from the first job it created."""
        batch = Batch.objects.get(jobs=job)
        batch.job_ids = list(batch_jobs(batch=batch).order_by("batch_index").values_list("id", flat=True))  # type: ignore[attr-defined]
        return self.created(batch)


class BatchDetailView(EndpointView):
    endpoint = Endpoint.JOBS_READ

    @extend_schema(
        operation_id="batches_detail",
        summary="One batch: its status, request counts and timestamps",
        responses={200: BatchSerializer, **problems(*GATE_STATUSES, 404)},
    )
    def get(self, request: AuthenticatedRequest, batch_id: UUID) -> Response:
        return Response(_serialize([_batch_or_404(request, batch_id)]))


class BatchJobsView(EndpointView):
    endpoint = Endpoint.JOBS_READ

    @extend_schema(
        operation_id="batches_jobs",
        summary="The batch's jobs in request order, cursor-paginated",
        parameters=[PageQuerySerializer],
        responses={
            200: paginated("PaginatedBatchJobList", BatchJobSerializer(many=True)),
            **problems(*GATE_STATUSES, 404),
        },
    )
    def get(self, request: AuthenticatedRequest, batch_id: UUID) -> Response:
        paginator = RequestOrderPagination()
        page = paginator.paginate_queryset(batch_jobs(batch=_batch_or_404(request, batch_id)), request, view=self)
        return paginator.get_paginated_response(BatchJobSerializer(page, many=True).data)


class RequestOrderPagination(NewestFirstPagination):
    """A batch's jobs in the order they were requested, the cursor a position (an index) in it."""

    ordering = ("batch_index", "id")

    def position_valid(self, position: str) -> bool:
        return position.isdigit()


class BatchCancelView(EndpointView):
    endpoint = Endpoint.JOBS_BATCH

    @extend_schema(
        operation_id="batches_cancel",
        summary="Cancel the batch's jobs that have not started (refunded); running ones finish",
        request=None,
        responses={200: BatchSerializer, **problems(*GATE_STATUSES, *BODY_STATUSES, 404, 409)},
    )
    def post(self, request: AuthenticatedRequest, batch_id: UUID) -> Response:
        return Response(_serialize([batch_cancel(user=request.user, batch_id=batch_id)]))


class BatchResultsView(EndpointView):
    endpoint = Endpoint.JOBS_READ

    @extend_schema(
        operation_id="batches_results",
        summary="The batch's results as JSON lines, one per job in request order: {id, index, status, result, error}",
        responses={(200, "application/x-ndjson"): OpenApiTypes.STR, **problems(*GATE_STATUSES, 404)},
    )
    def get(self, request: AuthenticatedRequest, batch_id: UUID) -> StreamingHttpResponse:
        batch = _batch_or_404(request, batch_id)
        response = StreamingHttpResponse(batch_results_jsonl(batch), content_type="application/x-ndjson")
        response["Content-Disposition"] = f'attachment; filename="batch-{batch.id}.jsonl"'
        return response


UPLOAD_LENGTH_PARAMETER = OpenApiParameter(
    "Upload-Length",
    {"type": "integer", "minimum": 1},
    OpenApiParameter.HEADER,
    required=True,
    description="The file's size in bytes, at most the policy's upload_max_bytes (larger: 413).",
)
UPLOAD_OFFSET_PARAMETER = OpenApiParameter(
    "Upload-Offset",
    {"type": "integer", "minimum": 0},
    OpenApiParameter.HEADER,
    required=True,
    description="Where this chunk starts: the upload's current offset (else 409 with the current one).",
)


def _header_int(request: AuthenticatedRequest, name: str) -> int:
    raw = request.headers.get(name, "")
    if not raw.isdigit():
        raise InvalidInput([{"field": name, "message": "Required: a whole number of bytes."}])
    return int(raw)


def _upload_response(upload: Any, code: int = status.HTTP_200_OK) -> Response:
    headers = {**UPLOAD_HEADERS, "Upload-Offset": str(upload.offset), "Upload-Length": str(upload.length)}
    return Response(UploadSerializer(upload).data, status=code, headers=headers)


class UploadCreateView(EndpointView):
    endpoint = Endpoint.JOBS_BATCH

    @extend_schema(
        operation_id="uploads_create",
        summary="Announce a JSONL file (one job request a line) to upload in chunks for a batch",
        parameters=[UPLOAD_LENGTH_PARAMETER],
        request=None,
        responses={201: UploadSerializer, **problems(*GATE_STATUSES, *BODY_STATUSES)},
    )
    def post(self, request: AuthenticatedRequest) -> Response:
        upload = upload_create(user=request.user, policy=request.policy, length=_header_int(request, "Upload-Length"))
        response = _upload_response(upload, status.HTTP_201_CREATED)
        response["Location"] = f"/api/v1/uploads/{upload.id}/"
        return response


class UploadDetailView(EndpointView):
    endpoint = Endpoint.JOBS_BATCH

    @extend_schema(
        operation_id="uploads_detail",
        summary="An upload's progress (HEAD answers the same in Upload-Offset and Upload-Length headers, tus-style)",
        responses={200: UploadSerializer, **problems(*GATE_STATUSES, 404)},
    )
    def get(self, request: AuthenticatedRequest, upload_id: UUID) -> Response:
        upload = upload_get(user=request.user, upload_id=upload_id)
        if upload is None:
            raise NotFound("No such upload.")
        return _upload_response(upload)

    def head(self, request: AuthenticatedRequest, upload_id: UUID) -> Response:
        response = self.get(request, upload_id)
        response.data = None
        return response

    @extend_schema(
        operation_id="uploads_append",
        summary="Append a chunk at Upload-Offset (Content-Type: application/offset+octet-stream)",
        parameters=[UPLOAD_OFFSET_PARAMETER],
        request={UPLOAD_CONTENT_TYPE: OpenApiTypes.BINARY},
        responses={200: UploadSerializer, **problems(*GATE_STATUSES, *BODY_STATUSES, 404, 409)},
    )
    def patch(self, request: AuthenticatedRequest, upload_id: UUID) -> Response:
        data = request._request.body
        media_type = request.content_type.split(";")[0].strip()
        if data and media_type != UPLOAD_CONTENT_TYPE:  # an empty PATCH appends nothing, whatever its type
            raise UnsupportedMediaType(media_type)
        offset = _header_int(request, "Upload-Offset")
        upload = upload_append(user=request.user, upload_id=upload_id, offset=offset, data=data)
        return _upload_response(upload)

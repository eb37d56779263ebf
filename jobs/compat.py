"""The original sync/async backend's API (`/sync`, `/async`, `/requests`), on the same services and records.

Each route runs under its own endpoint policy (`compat.*`); its `hash` jobs are ordinary Job rows.
Anonymous callers (where a compat policy has `auth_required=false`) own their jobs through one service user
and see only the jobs submitted from their own address. Validation errors answer 422, as the original's did.
"""

from typing import Any
from uuid import UUID

from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import AnonymousUser
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.api import EndpointSchema, EndpointView
from accounts.endpoints import Endpoint
from accounts.models import User
from accounts.requests import PolicyRequest
from jobs.encryption import masked_input, open_result
from jobs.kind_settings import get_kind_settings
from jobs.kinds.hash import HashInput
from jobs.models import Job, JobMode, JobStatus
from jobs.pipeline import job_submit
from jobs.selectors import job_list
from jobs.serializers import callback_url_field
from jobsite.after_response import send_response_first
from jobsite.api import BODY_STATUSES, GATE_STATUSES, problems
from jobsite.client_ip import client_ip
from jobsite.errors import NotFound
from jobsite.fields import ListedChoiceField
from jobsite.process_cache import settings_cache

COMPAT_SYNC = Endpoint.COMPAT_SYNC
COMPAT_ASYNC = Endpoint.COMPAT_ASYNC
COMPAT_READ = Endpoint.COMPAT_READ

COMPAT_KIND = "hash"
"""The only work the original backend did."""

ANONYMOUS_USERNAME = "compat-anonymous"
"""The service user that owns jobs submitted anonymously through the compatible routes."""

REQUESTS_DEFAULT_LIMIT = 100
REQUESTS_MAX_LIMIT = 1000
"""Page size bounds of GET /requests."""
REQUESTS_MAX_OFFSET = 2**31 - 1
"""Largest offset of GET /requests: far past any real list, far below the databases' 64-bit OFFSET."""

COMPAT_STATUSES = tuple(422 if status == 400 else status for status in GATE_STATUSES)
"""The compatible routes answer 422 where the API answers 400."""

STATUS_NAMES: dict[str, str] = {
    # An own API job held (run_at, depends_on) reads as the original's pending; compat jobs are never held.
    JobStatus.SCHEDULED: "pending",
    JobStatus.WAITING: "pending",
    JobStatus.QUEUED: "pending",
    JobStatus.RUNNING: "processing",
    JobStatus.CANCELING: "processing",  # the original backend had no such state: still running to it
    JobStatus.SUCCEEDED: "success",
    JobStatus.FAILED: "error",
    JobStatus.CANCELED: "canceled",
}
"""Job status as the original backend named it."""


def _anonymous(request: Request) -> bool:
    return not (request.user is not None and request.user.is_authenticated)


def compat_owner(user: User | AnonymousUser | None) -> User:
    """The user a compatible-route job belongs to: the caller, or the anonymous service user."""
    if isinstance(user, User) and user.is_authenticated:
        return user

    def load() -> User:
        owner, _ = User.objects.get_or_create(username=ANONYMOUS_USERNAME, defaults={"password": make_password(None)})
        return owner

    # Per process, like policies: the hot path of an anonymous caller reads nothing but what it writes.
    return settings_cache.get((User, ANONYMOUS_USERNAME), load)


def compat_visible_jobs(request: Request, *, mode: str = "") -> QuerySet[Job]:
    """The hash jobs the caller may read: its own; an anonymous caller's, those submitted from its address."""
    jobs = job_list(user=compat_owner(request.user), mode=mode, kind=COMPAT_KIND)
    if _anonymous(request):
        address = client_ip(request)
        jobs = jobs.filter(client_ip=address) if address else jobs.none()
    return jobs


class CompatSyncInput(HashInput):
    pass


class CompatAsyncInput(HashInput):
    callback_url = callback_url_field(required=False)


class CompatQuery(serializers.Serializer):
    mode = ListedChoiceField(choices=JobMode.choices, required=False)
    limit = serializers.IntegerField(min_value=1, max_value=REQUESTS_MAX_LIMIT, default=REQUESTS_DEFAULT_LIMIT)
    offset = serializers.IntegerField(min_value=0, max_value=REQUESTS_MAX_OFFSET, default=0)


def _compat_result(job: Job) -> dict[str, Any] | None:
    """The result as the original backend gave it, opened like the API's (an encrypted result is served plain)."""
    result = open_result(job.result)
    if job.status != JobStatus.SUCCEEDED or result is None:
        return None
    return {"request_id": str(job.id), **result, "processing_time_ms": job.run_ms}


class CompatResultSerializer(serializers.Serializer):
    request_id = serializers.UUIDField()
    input_hash = serializers.CharField()
    output_hash = serializers.CharField()
    iterations = serializers.IntegerField()
    processing_time_ms = serializers.IntegerField(allow_null=True)


class CompatSyncResponse(serializers.Serializer):
    status = serializers.ChoiceField(choices=["success"])
    result = CompatResultSerializer()


class CompatAsyncResponse(serializers.Serializer):
    status = serializers.ChoiceField(choices=["accepted"])
    request_id = serializers.UUIDField()
    message = serializers.CharField()


class _CompatOutcomeSerializer(serializers.Serializer):
    """What the original backend said of a request's outcome: its result or its error."""

    result = serializers.SerializerMethodField()
    error = serializers.SerializerMethodField()

    @extend_schema_field(CompatResultSerializer(allow_null=True))
    def get_result(self, job: Job) -> dict[str, Any] | None:
        return _compat_result(job)

    def get_error(self, job: Job) -> str | None:
        return job.error_message or None


class CompatRequestSerializer(_CompatOutcomeSerializer):
    """One request record, as GET /requests lists it."""

    request_id = serializers.UUIDField(source="id")
    mode = serializers.ChoiceField(choices=JobMode.choices)
    status = serializers.SerializerMethodField()
    data = serializers.SerializerMethodField()  # type: ignore[assignment]  # a field: DRF's metaclass leaves the property
    iterations = serializers.SerializerMethodField()
    callback_url = serializers.CharField()
    created_at = serializers.DateTimeField()
    completed_at = serializers.DateTimeField(source="finished_at", allow_null=True)
    processing_time_ms = serializers.IntegerField(source="run_ms", allow_null=True)

    @extend_schema_field(serializers.ChoiceField(choices=sorted(set(STATUS_NAMES.values()))))
    def get_status(self, job: Job) -> str:
        return STATUS_NAMES[job.status]

    def get_data(self, job: Job) -> str | None:
        return masked_input(get_kind_settings(job.kind), job.input).get("data")

    def get_iterations(self, job: Job) -> int | None:
        iterations = masked_input(get_kind_settings(job.kind), job.input).get("iterations")
        return iterations if isinstance(iterations, int) else None  # encrypted: masked, not a count


class CompatRequestListSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    requests = CompatRequestSerializer(many=True)


class CompatCallbackSerializer(_CompatOutcomeSerializer):
    """The body the original backend POSTed to callback_url."""

    request_id = serializers.UUIDField(source="id")
    status = serializers.SerializerMethodField()
    timestamp = serializers.DateTimeField(source="finished_at", allow_null=True)

    @extend_schema_field(serializers.ChoiceField(choices=["success", "error"]))
    def get_status(self, job: Job) -> str:
        return "success" if job.status == JobStatus.SUCCEEDED else "error"


class CompatSchema(EndpointSchema):
    """Authentication is optional where the policy lets anonymous callers in (`auth_required=false`)."""

    def get_auth(self) -> list[dict[str, Any]]:
        return [*super().get_auth(), {}]


class CompatView(EndpointView):
    """Every 400 is a 422 here, as the original backend's validation errors were (still problem+json, same code)."""

    schema = CompatSchema()

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        if response.status_code == 400:
            response.status_code = response.data["status"] = 422
        return response


class CompatSubmitView(CompatView):
    """POST /sync and /async: the original request shape, submitted through the one job pipeline."""

    input_class: type[HashInput]
    mode: str

    def submit(self, request: PolicyRequest) -> Job:
        params = self.input_class(data=request.data)
        params.is_valid(raise_exception=True)
        callback_url = params.validated_data.pop("callback_url", "")
        return job_submit(
            user=compat_owner(request.user),
            policy=request.policy,
            kind_name=COMPAT_KIND,
            params=dict(params.validated_data),
            mode=self.mode,
            callback_url=callback_url,
            free=_anonymous(request),
            client_ip=client_ip(request) or None,
        )


class CompatSyncView(CompatSubmitView):
    endpoint = COMPAT_SYNC
    input_class = CompatSyncInput
    mode = JobMode.SYNC

    @extend_schema(
        operation_id="compat_sync",
        summary="Original API: hash now",
        request=CompatSyncInput,
        responses={200: CompatSyncResponse, **problems(*COMPAT_STATUSES, *BODY_STATUSES, 402, 409, 502)},
    )
    def post(self, request: PolicyRequest) -> Response:
        send_response_first()  # the result's cache copy is stored once the result is sent
        return Response({"status": "success", "result": _compat_result(self.submit(request))})


class CompatAsyncView(CompatSubmitView):
    endpoint = COMPAT_ASYNC
    input_class = CompatAsyncInput
    mode = JobMode.ASYNC

    @extend_schema(
        operation_id="compat_async",
        summary="Original API: queue a hash; the result is POSTed to callback_url (signed)",
        request=CompatAsyncInput,
        responses={200: CompatAsyncResponse, **problems(*COMPAT_STATUSES, *BODY_STATUSES, 402, 409)},
    )
    def post(self, request: PolicyRequest) -> Response:
        send_response_first()  # as the original's background task: its callback never precedes this answer
        job = self.submit(request)
        message = "Request accepted for processing" + (
            f"; the result will be sent to {job.callback_url}" if job.callback_url else ""
        )
        return Response({"status": "accepted", "request_id": str(job.id), "message": message})


class CompatRequestListView(CompatView):
    endpoint = COMPAT_READ

    @extend_schema(
        operation_id="compat_requests",
        summary="Original API: request records, newest first",
        parameters=[CompatQuery],
        responses={200: CompatRequestListSerializer, **problems(*COMPAT_STATUSES)},
    )
    def get(self, request: Request) -> Response:
        query = CompatQuery(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        jobs = compat_visible_jobs(request, mode=query.validated_data.get("mode", ""))
        offset, limit = query.validated_data["offset"], query.validated_data["limit"]
        page = jobs[offset : offset + limit]
        return Response({"total": jobs.count(), "requests": CompatRequestSerializer(page, many=True).data})


class CompatRequestDetailView(CompatView):
    endpoint = COMPAT_READ

    @extend_schema(
        operation_id="compat_request",
        summary="Original API: one request record",
        responses={200: CompatRequestSerializer, **problems(*COMPAT_STATUSES, 404)},
    )
    def get(self, request: Request, request_id: str) -> Response:
        try:
            job_id = UUID(request_id)
        except ValueError:
            raise NotFound("No such request.") from None
        job = compat_visible_jobs(request).filter(pk=job_id).first()
        if job is None:
            raise NotFound("No such request.")
        return Response(CompatRequestSerializer(job).data)

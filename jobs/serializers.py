import contextlib
import threading
from datetime import datetime
from functools import cached_property
from typing import Any, cast
from urllib.parse import urlsplit
from uuid import UUID

from django.utils.dateparse import parse_datetime
from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import Direction, PolymorphicProxySerializer, extend_schema_field
from rest_framework import serializers
from rest_framework.utils.serializer_helpers import BindingDict

from accounts.models import Priority
from jobs.dependencies import DEPENDS_ON_MAX
from jobs.encryption import masked_input, open_result
from jobs.kind_settings import get_kind_settings
from jobs.kinds import KINDS, Kind
from jobs.models import (
    Batch,
    BatchStatus,
    CallbackAttempt,
    CallbackStatus,
    Job,
    JobMode,
    JobStatus,
    Upload,
    WebhookEvent,
)
from jobs.uploads import UPLOAD_ID_FIELD
from jobsite.errors import CallbackUrlForbidden
from jobsite.fields import (
    HTTP_URL_PATTERN,
    ListedChoiceField,
    StrictBooleanField,
    StrictCharField,
    matches_http_url,
)

CALLBACK_URL_MAX_LENGTH = 2048


@extend_schema_field({"type": "string", "pattern": HTTP_URL_PATTERN, "maxLength": CALLBACK_URL_MAX_LENGTH})
class CallbackUrlField(StrictCharField):
    """An http(s) URL. Refusals carry API.md's one code for callback URLs, 400 callback_url_forbidden: here
    what is forbidden on its face (not HTTP_URL_PATTERN), then the SSRF guard in job_submit for the addresses."""

    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        if not matches_http_url(value):
            raise CallbackUrlForbidden(_shape_refusal(value))
        return value


def _shape_refusal(url: str) -> str:
    """Why a URL fails HTTP_URL_PATTERN, said precisely where it is the port."""
    try:
        _ = urlsplit(url).port  # the property raises ValueError for a port outside 0-65535
    except ValueError:
        return "A callback URL's port is a number from 1 to 65535."
    return "A callback URL is an http(s) URL in ASCII, without credentials."


def callback_url_field(**kwargs: Any) -> CallbackUrlField:
    kwargs.setdefault("help_text", "Receives the final job as a signed webhook (Standard Webhooks).")
    return CallbackUrlField(max_length=CALLBACK_URL_MAX_LENGTH, **kwargs)


class OffsetDateTimeField(serializers.DateTimeField):
    """An RFC 3339 instant with its UTC offset (`Z` or `+hh:mm`): a naive time would depend on the server's zone."""

    default_error_messages = {"naive": "Give the UTC offset (RFC 3339), e.g. 2030-01-01T12:00:00Z."}

    def to_internal_value(self, value: Any) -> datetime:
        with contextlib.suppress(ValueError):  # well-formed but impossible (month 13): DRF's own "invalid" below
            if isinstance(value, str) and (parsed := parse_datetime(value)) is not None and parsed.tzinfo is None:
                self.fail("naive")
        return super().to_internal_value(value)


class JobIdField(serializers.UUIDField):
    """A job id: a JSON string in UUID form (DRF's UUIDField would take an integer too)."""

    def to_internal_value(self, data: Any) -> UUID:
        if not isinstance(data, str):
            self.fail("invalid", value=data)
        return super().to_internal_value(data)


BATCH_ITEM = "batch"
"""The KIND_REQUESTS entry of a job request inside a batch: an async job without a callback_url of its own."""


@extend_schema_field({"oneOf": [{"type": "integer", "minimum": 0}, {"type": "string", "format": "uuid"}]})
class BatchDependencyField(serializers.Field):
    """A batch request's dependency: the index of another request of the batch, or the id of an own job."""

    default_error_messages = {"invalid": "Give the index of a request of this batch (from 0) or a job id."}

    def to_internal_value(self, data: Any) -> int | UUID:
        if isinstance(data, float) and data.is_integer():  # JSON Schema's integer: 3.0 is one
            data = int(data)
        if isinstance(data, int) and not isinstance(data, bool) and data >= 0:
            return data
        if isinstance(data, str):
            with contextlib.suppress(ValueError):
                return UUID(data)
        self.fail("invalid")

    def to_representation(self, value: int | UUID) -> int | str:
        return value if isinstance(value, int) else str(value)


def _dependency_fields(mode: str) -> dict[str, serializers.Field]:
    """What a job request may add to wait for other jobs (jobs.holding); a batch's requests may name each other."""
    in_batch = mode == BATCH_ITEM
    return {
        "depends_on": serializers.ListField(
            child=BatchDependencyField() if in_batch else JobIdField(),
            required=False,
            max_length=DEPENDS_ON_MAX,
            help_text=(
                "Indexes of other requests of this batch, or ids of own jobs, " if in_batch else "Ids of own jobs "
            )
            + "to wait for (`waiting`): queued once all succeed; failed `dependency_failed` (refunded) once one "
            "fails or is canceled.",
        ),
        "allow_dependency_failure": StrictBooleanField(
            required=False, help_text="Run once every dependency is final, whatever its outcome."
        ),
    }


def _held_fields() -> dict[str, serializers.Field]:
    """What an async submission may add to be held until a condition holds (jobs.holding)."""
    return {
        "run_at": OffsetDateTimeField(
            required=False,
            help_text="Queue it no earlier than this (RFC 3339 with offset), at most the policy's max_schedule_ahead "
            "ahead; now or past: at once. Until then `scheduled`.",
        ),
        **_dependency_fields(JobMode.ASYNC),
    }


ASYNC_ONLY_FIELDS = ("callback_url", "priority", "webhook_events", *_held_fields())
"""Members of the submission envelope that only async submissions take."""

BATCH_ITEM_FIELDS = tuple(_dependency_fields(BATCH_ITEM))
"""The members of ASYNC_ONLY_FIELDS a batch's request takes too."""


def priority_field() -> ListedChoiceField:
    return ListedChoiceField(
        choices=Priority.choices,
        required=False,
        help_text="How soon the job is served in its pool, up to the policy's max_priority (above it: 403 "
        "priority_not_allowed); default normal (or the policy's max, if lower). Higher goes first by weight "
        "(high 4 : normal 2 : low 1 by default), so low is never starved.",
    )


@extend_schema_field(
    {
        "type": "array",
        "items": {"type": "string", "enum": WebhookEvent.values},
        "uniqueItems": True,
        "maxItems": len(WebhookEvent.values),
    }
)
class WebhookEventsField(serializers.ListField):
    """Events sent to callback_url besides the final webhook, each named once."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(child=ListedChoiceField(choices=WebhookEvent.choices), **kwargs)

    def to_internal_value(self, data: Any) -> list[str]:
        events = super().to_internal_value(data)
        if len(set(events)) != len(events):
            raise serializers.ValidationError("Name each event once.")
        return events


def webhook_events_field() -> WebhookEventsField:
    return WebhookEventsField(
        required=False,
        max_length=len(WebhookEvent.values),
        help_text="Events sent to callback_url besides the final webhook (always sent): job.started, job.progress. "
        "Needs a callback_url.",
    )


WEBHOOK_EVENTS_NEED = {"webhook_events": ["callback_url"]}
"""JSON Schema `dependentRequired` of an async submission: webhook events are sent to its callback_url."""


class UploadableInput(serializers.Serializer):
    """A kind's input whose `upload_field` may instead be read from an upload (exactly one of the two)."""

    upload_field: str
    upload_id = serializers.UUIDField(
        required=False,
        help_text="A complete upload of yours whose bytes (UTF-8 text) stand for the field it replaces; "
        "the job keeps a copy and the upload is deleted once the job is accepted.",
    )

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        fields[self.upload_field].required = False  # one of the two: validate() and the schema's oneOf
        return fields

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if UPLOAD_ID_FIELD not in attrs and self.upload_field not in attrs:
            raise serializers.ValidationError({self.upload_field: [f"Give {self.upload_field} or {UPLOAD_ID_FIELD}."]})
        if UPLOAD_ID_FIELD in attrs and self.upload_field in attrs:
            raise serializers.ValidationError(
                {UPLOAD_ID_FIELD: [f"Give {self.upload_field} or {UPLOAD_ID_FIELD}, not both."]}
            )
        return attrs


def _kind_input_class(kind: Kind) -> type[serializers.Serializer]:
    """The kind's input serializer; with `upload_id` as the alternative to its upload_field if it has one."""
    if kind.upload_field is None:
        return kind.serializer_class
    attributes = {
        "upload_field": kind.upload_field,
        "one_of_required": [[kind.upload_field], [UPLOAD_ID_FIELD]],  # jobsite.api.ApiSchema writes it
        "__doc__": f"The input of a `{kind.name}` job: `{kind.upload_field}` inline, or `{UPLOAD_ID_FIELD}` naming "
        "an upload that holds it.",
    }
    # The kind's own name: the schema component stays HashInput; the compatible routes keep the plain class.
    return type(kind.serializer_class.__name__, (UploadableInput, kind.serializer_class), attributes)


_FIELDS_OF_THIS_THREAD = threading.local()


class FieldsPerThreadSerializer(serializers.Serializer):
    """A validating serializer whose fields are built and bound once per class and thread, where DRF deep-copies
    every declared field for each instance (0.55 ms of each submission: the kind's request and its input). Its
    fields must read nothing of the instance they are bound to (no context, initial data or partial), so that the
    first instance of a thread can lend them to the next; a thread validates one submission at a time."""

    @cached_property
    def fields(self) -> BindingDict:  # type: ignore[override]  # DRF's own cached_property, once per thread
        built: dict[type, BindingDict] = _FIELDS_OF_THIS_THREAD.__dict__.setdefault("by_class", {})
        if type(self) not in built:
            built[type(self)] = serializers.Serializer.fields.func(self)  # type: ignore[attr-defined]
        return built[type(self)]


def _kind_request_class(kind: Kind, mode: str) -> type[serializers.Serializer]:
    """The submission body for one kind in one mode: the envelope around the kind's own input serializer."""
    input_required = any(field.required for field in kind.serializer_class().fields.values())
    input_options: dict[str, Any] = {} if input_required else {"default": dict}
    fields: dict[str, Any] = {
        "kind": ListedChoiceField(choices=[kind.name]),
        "input": KIND_INPUTS[kind.name](required=input_required, **input_options),
    }
    if mode == BATCH_ITEM:
        fields.update(_dependency_fields(BATCH_ITEM))
    if mode == JobMode.ASYNC:
        fields["callback_url"] = callback_url_field(required=False)
        fields.update(_held_fields())
        fields["priority"] = priority_field()
        fields["webhook_events"] = webhook_events_field()
    name = f"{kind.name.title()}{mode.title()}JobRequest"
    attributes = {**fields, "__doc__": f"A `{kind.name}` job ({mode})."}
    if mode == JobMode.ASYNC:
        attributes["dependent_required"] = WEBHOOK_EVENTS_NEED  # jobsite.api.ApiSchema writes it in the schema
    return type(name, (FieldsPerThreadSerializer,), attributes)


KIND_INPUTS = {name: _kind_input_class(kind) for name, kind in KINDS.items()}
"""Per kind: the input serializer of the job API (the compatible routes use the kind's own)."""


KIND_REQUESTS: dict[str, dict[str, type[serializers.Serializer]]] = {
    mode: {name: _kind_request_class(kind, mode) for name, kind in sorted(KINDS.items())}
    for mode in (JobMode.SYNC, JobMode.ASYNC, BATCH_ITEM)
}
"""Per mode (and for a batch's items), per kind: the serializer that validates a submission and documents it."""

CALLBACK_URL_REFUSALS = {
    JobMode.SYNC: "Only async jobs take a callback_url.",
    BATCH_ITEM: "The jobs of a batch report through the batch's callback_url (one batch.completed webhook).",
}
"""Why a submission of this mode cannot carry a callback_url."""


def job_request_schema(mode: str) -> PolymorphicProxySerializer:
    """OpenAPI: the submission body as a union discriminated on `kind`."""
    return PolymorphicProxySerializer(
        component_name=f"{mode.title()}JobRequest",
        serializers={**KIND_REQUESTS[mode]},  # a copy: typed as the wider dict spectacular takes
        resource_type_field_name="kind",
    )


class JobRequestSerializer(serializers.Serializer):
    """The submission envelope: `kind` picks the serializer of KIND_REQUESTS that validates the rest."""

    kind = ListedChoiceField(choices=sorted(KINDS))

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        mode = self.context["mode"]
        if mode in CALLBACK_URL_REFUSALS and "callback_url" in self.initial_data:
            raise serializers.ValidationError({"callback_url": [CALLBACK_URL_REFUSALS[mode]]})
        taken = BATCH_ITEM_FIELDS if mode == BATCH_ITEM else ()
        named = [name for name in ASYNC_ONLY_FIELDS if name in self.initial_data and name not in taken]
        if mode != JobMode.ASYNC and named:
            refusal = "A batch's jobs take no {} of their own." if mode == BATCH_ITEM else "Only async jobs take {}."
            raise serializers.ValidationError({name: [refusal.format(name)] for name in named})
        request = KIND_REQUESTS[mode][attrs["kind"]](data=self.initial_data)
        request.is_valid(raise_exception=True)
        data = {"callback_url": "", **request.validated_data, "input": dict(request.validated_data["input"])}
        events = data.pop("webhook_events", [])
        if events and not data["callback_url"]:
            raise serializers.ValidationError(
                {"webhook_events": ["Webhook events are sent to a callback_url: give one."]}
            )
        if len(set(events)) != len(events):
            raise serializers.ValidationError({"webhook_events": ["Name each event once."]})
        return {**data, "webhook_events": events}


class SharedRendererSerializer(serializers.ModelSerializer):
    """A read-only ModelSerializer whose fields are built and bound once per class: it renders through one shared
    instance of its class. DRF builds, deep-copies and binds every field for each instance (0.5-1 ms of each job
    response, and per job of a list); rendering reads no state of the instance, so its methods must not read
    `self.context` or `self.instance`."""

    _renderer: "SharedRendererSerializer"

    def to_representation(self, instance: Any) -> dict[str, Any]:
        renderer = type(self).__dict__.get("_renderer")
        if renderer is None:  # two threads may both make one: either serves
            renderer = type(self)()
            type(self)._renderer = renderer
        return serializers.ModelSerializer.to_representation(renderer, instance)


class CallbackAttemptSerializer(SharedRendererSerializer):
    class Meta:
        model = CallbackAttempt
        fields = ["n", "at", "status_code", "error", "duration_ms"]


def callback_status_of(job: Job, attempts: list[CallbackAttempt]) -> str:
    """The webhook's status as its attempts show it."""
    # The job row is read before its attempts: a 2xx last attempt committed in between says the status.
    if job.callback_status == CallbackStatus.PENDING and attempts and 200 <= (attempts[-1].status_code or 0) < 300:
        return CallbackStatus.DELIVERED
    return job.callback_status


class JobErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class JobCallbackSerializer(serializers.Serializer):
    url = serializers.CharField(allow_blank=True, help_text="The callback URL, or empty.")
    status = serializers.ChoiceField(choices=CallbackStatus.choices)
    attempts = CallbackAttemptSerializer(many=True)
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=WebhookEvent.choices),
        help_text="Events sent besides the final webhook (webhook_events of the submission).",
    )


@extend_schema_field(OpenApiTypes.DATETIME)
class StoredInstantField(serializers.CharField):
    """An RFC 3339 instant kept as text in a JSON column, served as stored (the export serves the same text)."""


class AttemptLogEntrySerializer(serializers.Serializer):
    """One failed attempt of a job."""

    n = serializers.IntegerField()
    at = StoredInstantField()
    code = serializers.CharField()
    message = serializers.CharField(allow_blank=True)
    callers_fault = serializers.BooleanField(help_text="True when the input was at fault (no refund).")
    worker = serializers.CharField(required=False, allow_blank=True, help_text="The RQ worker that ran it.")
    started_at = StoredInstantField(required=False, help_text="When the attempt started.")


class JobProgressSerializer(serializers.Serializer):
    """How far a running job is, as its kind last reported (throttled: about every half second at most)."""

    fraction = serializers.FloatField(
        min_value=0, max_value=1, allow_null=True, help_text="Share of the work done; null: unknown (bytes only)."
    )
    message = serializers.CharField(allow_blank=True)
    updated_at = StoredInstantField()


class JobEventSerializer(serializers.Serializer):
    """A job's `status` or `progress` event (event streams' data, `job.started`/`job.progress` webhooks' data)."""

    id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=JobStatus.choices)
    attempts = serializers.IntegerField()
    progress = JobProgressSerializer(allow_null=True)


class JobWebhookEventSerializer(serializers.Serializer):
    """The body of a `job.started` or `job.progress` webhook (the final webhook's body is the job itself)."""

    type = serializers.ChoiceField(choices=WebhookEvent.choices)
    timestamp = serializers.DateTimeField()
    data = JobEventSerializer()  # type: ignore[assignment]  # a field: DRF's metaclass leaves the property


class JobSerializer(SharedRendererSerializer):
    input = serializers.SerializerMethodField()
    result = serializers.SerializerMethodField()
    error = serializers.SerializerMethodField()
    callback = serializers.SerializerMethodField()
    attempt_log = AttemptLogEntrySerializer(many=True, read_only=True)
    depends_on = serializers.ListField(
        child=serializers.UUIDField(), read_only=True, help_text="The jobs it waits for (submission order)."
    )
    progress = JobProgressSerializer(allow_null=True, read_only=True)

    class Meta:
        model = Job
        fields = [
            "id",
            "kind",
            "mode",
            "priority",
            "status",
            "input",
            "result",
            "error",
            "cost",
            "attempts",
            "attempt_log",
            "cached",
            "created_at",
            "started_at",
            "finished_at",
            "queue_wait_ms",
            "run_ms",
            "expires_at",
            "run_at",
            "depends_on",
            "allow_dependency_failure",
            "progress",
            "callback",
        ]
        read_only_fields = fields
        extra_kwargs = {"expires_at": {"help_text": "When the job and its results are deleted (set once final)."}}

    @extend_schema_field(serializers.DictField())
    def get_input(self, job: Job) -> dict[str, Any]:
        return masked_input(get_kind_settings(job.kind), job.input)

    @extend_schema_field(serializers.DictField(allow_null=True))
    def get_result(self, job: Job) -> Any:
        return open_result(job.result)

    @extend_schema_field(JobErrorSerializer(allow_null=True))
    def get_error(self, job: Job) -> dict[str, str] | None:
        if not job.error_code:
            return None
        return {"code": job.error_code, "message": job.error_message}

    @extend_schema_field(JobCallbackSerializer)
    def get_callback(self, job: Job) -> dict[str, Any]:
        rows = list(job.callback_attempts.all())
        return {
            "url": job.callback_url,
            "status": callback_status_of(job, rows),
            "attempts": CallbackAttemptSerializer(rows, many=True).data if rows else [],
            "events": job.webhook_event_list,
        }


class WebhookSecretSerializer(serializers.Serializer):
    secret = serializers.CharField(help_text="whsec_...; shown once")


class CreatedRangeSerializer(serializers.Serializer):
    """`created_after` / `created_before` (ISO 8601, exclusive bounds), served by the created_at indexes; a range
    that ends before it starts selects nothing, like any other filter that matches no job."""

    created_after = serializers.DateTimeField(required=False, help_text="Only jobs created after this instant.")
    created_before = serializers.DateTimeField(required=False, help_text="Only jobs created before this instant.")


class JobListQuerySerializer(CreatedRangeSerializer):
    mode = ListedChoiceField(choices=JobMode.choices, required=False)
    status = ListedChoiceField(choices=JobStatus.choices, required=False)
    kind = ListedChoiceField(choices=sorted(KINDS), required=False)


class ExportQuerySerializer(CreatedRangeSerializer):
    format = ListedChoiceField(choices=["jsonl", "csv"], default="jsonl")


DELIVERY_STATUSES = [CallbackStatus.PENDING, CallbackStatus.DELIVERED, CallbackStatus.FAILED]
"""What a delivery can be (a job without a webhook has none)."""


class WebhookDeliverySerializer(serializers.ModelSerializer):
    """One job's webhook: its delivery id (the `webhook-id` header, stable across attempts) and every attempt."""

    webhook_id = serializers.UUIDField(source="delivery_id", read_only=True, help_text="The webhook-id header.")
    job_id = serializers.UUIDField(source="id", read_only=True)
    url = serializers.CharField(source="callback_url", read_only=True)
    status = serializers.SerializerMethodField()
    attempts = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = ["webhook_id", "job_id", "url", "status", "attempts", "created_at"]
        read_only_fields = fields

    @extend_schema_field(serializers.ChoiceField(choices=DELIVERY_STATUSES))
    def get_status(self, job: Job) -> str:
        return callback_status_of(job, list(job.callback_attempts.all()))

    @extend_schema_field(CallbackAttemptSerializer(many=True))
    def get_attempts(self, job: Job) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], CallbackAttemptSerializer(job.callback_attempts.all(), many=True).data)


class WebhookDeliveryQuerySerializer(CreatedRangeSerializer):
    status = ListedChoiceField(choices=DELIVERY_STATUSES, required=False)
    job_id = serializers.UUIDField(required=False, help_text="Only this job's delivery.")


class WebhookTestRequestSerializer(serializers.Serializer):
    url = callback_url_field(help_text="Receives one signed test event (`type: webhook.test`).")


class WebhookTestResultSerializer(serializers.Serializer):
    webhook_id = serializers.CharField(help_text="The test event's webhook-id header.")
    status = serializers.ChoiceField(
        choices=DELIVERY_STATUSES, help_text="pending: still being sent when the wait ended (202)."
    )
    delivered = serializers.BooleanField(help_text="The receiver answered 2xx.")
    status_code = serializers.IntegerField(allow_null=True, help_text="The receiver's status, if it answered.")
    error = serializers.CharField(allow_blank=True, help_text="Why it was not delivered (as in delivery attempts).")
    duration_ms = serializers.IntegerField(allow_null=True)


class _RateLimitStateSerializer(serializers.Serializer):
    algorithm = serializers.CharField()
    key = serializers.CharField(help_text="user, ip or global: whom the limit counts")
    quota = serializers.IntegerField()
    window = serializers.IntegerField(help_text="Seconds.")
    remaining = serializers.IntegerField(allow_null=True, help_text="null: the limiter cannot be read right now")
    reset = serializers.IntegerField(allow_null=True, help_text="Seconds until the limit is whole again.")


class _ConcurrencySerializer(serializers.Serializer):
    max_per_user = serializers.IntegerField(allow_null=True, help_text="null: no cap")
    max_global = serializers.IntegerField(allow_null=True, help_text="null: no cap")
    in_use_by_you = serializers.IntegerField(help_text="Your queued or running jobs under this endpoint.")
    in_use_global = serializers.IntegerField()


class _EndpointLimitsSerializer(serializers.Serializer):
    name = serializers.CharField()
    enabled = serializers.BooleanField()
    rate_limit = _RateLimitStateSerializer(allow_null=True)
    max_priority = serializers.ChoiceField(
        choices=Priority.choices, help_text="The highest `priority` a job submission under it may ask."
    )
    concurrency = _ConcurrencySerializer()


class LimitsSerializer(serializers.Serializer):
    balance = serializers.IntegerField(help_text="Credits available.")
    endpoints = _EndpointLimitsSerializer(many=True)


@extend_schema_field(
    PolymorphicProxySerializer(
        component_name="BatchJobRequest",
        serializers={**KIND_REQUESTS[BATCH_ITEM]},
        resource_type_field_name="kind",
        many=True,
    )
)
class BatchJobRequestsField(serializers.ListField):
    """A batch's job requests, each validated by JobRequestSerializer (batch mode) when the batch is built."""


class ClosedSerializer(serializers.Serializer):
    """A body that names every member it takes: the schema says `additionalProperties: false`, and
    closed_validate refuses any other member (the forms of a `oneOf` body cannot be told apart otherwise)."""


class ClosedSerializerExtension(OpenApiSerializerExtension):
    target_class = ClosedSerializer
    match_subclasses = True

    def map_serializer(self, auto_schema: AutoSchema, direction: Direction) -> dict[str, Any]:
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        return {**schema, "additionalProperties": False}


def _batch_callback_url() -> CallbackUrlField:
    return callback_url_field(
        required=False, help_text="Receives one signed `batch.completed` event when every job is final."
    )


class BatchInlineSerializer(ClosedSerializer):
    """A batch of job requests sent inline."""

    requests = BatchJobRequestsField(
        child=serializers.JSONField(),
        min_length=1,
        help_text="The job requests (as a single async job takes them, without callback_url); at most the "
        "policy's batch_max_jobs.",
    )
    callback_url = _batch_callback_url()


class BatchFromUploadSerializer(ClosedSerializer):
    """A batch made of a complete upload: a JSONL file, one job request a line."""

    upload_id = serializers.UUIDField(help_text="A complete upload (POST /api/v1/uploads/, then PATCHes).")
    callback_url = _batch_callback_url()


BATCH_REQUEST_SCHEMA = PolymorphicProxySerializer(
    component_name="BatchCreate",
    serializers=[BatchInlineSerializer, BatchFromUploadSerializer],
    resource_type_field_name=None,
)
"""OpenAPI: a batch's body is one of the two (requests inline, or an upload's id), never both."""


def batch_request_validate(data: Any) -> dict[str, Any]:
    """The body of POST /batches/, validated by the serializer of the one form it takes."""
    if not isinstance(data, dict) or ("requests" in data) == ("upload_id" in data):
        raise serializers.ValidationError("Send either requests or upload_id, not both nor neither.")
    form = BatchInlineSerializer if "requests" in data else BatchFromUploadSerializer
    body = form(data=data)
    if unknown := sorted(set(data) - set(body.fields)):
        raise serializers.ValidationError({name: ["Not a member of this body."] for name in unknown})
    body.is_valid(raise_exception=True)
    return dict(body.validated_data)


class RequestCountsSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    waiting = serializers.IntegerField(
        help_text="Waiting for the jobs they depend on (`depends_on`): the jobs neither final, queued nor running."
    )
    queued = serializers.IntegerField()
    running = serializers.IntegerField()
    succeeded = serializers.IntegerField()
    failed = serializers.IntegerField()
    canceled = serializers.IntegerField()


class BatchCallbackSerializer(serializers.Serializer):
    url = serializers.CharField(allow_blank=True, help_text="The callback URL, or empty.")
    status = serializers.ChoiceField(choices=CallbackStatus.choices)
    webhook_id = serializers.UUIDField(help_text="The webhook-id header of the batch.completed event.")
    attempts = CallbackAttemptSerializer(many=True)


class BatchSerializer(serializers.ModelSerializer):
    """A batch with its request counts; `job_ids` (in request order) only in the answer that created it."""

    status = serializers.ChoiceField(choices=BatchStatus.choices)
    request_counts = serializers.SerializerMethodField()
    callback = serializers.SerializerMethodField()

    class Meta:
        model = Batch
        fields = [
            "id",
            "status",
            "request_counts",
            "cost",
            "created_at",
            "in_progress_at",
            "canceled_at",
            "completed_at",
            "callback",
        ]
        read_only_fields = fields

    @extend_schema_field(RequestCountsSerializer)
    def get_request_counts(self, batch: Batch) -> dict[str, int]:
        active: dict[str, int] = self.context.get("active_counts", {}).get(batch.pk, {})
        queued, running = active.get(JobStatus.QUEUED, 0), active.get(JobStatus.RUNNING, 0)
        return {
            "total": batch.total,
            # The rest, not counted: a job's move between the batch row's read and its active counts' may show here.
            "waiting": max(0, batch.total - batch.finished - queued - running),
            "queued": queued,
            "running": running,
            "succeeded": batch.succeeded,
            "failed": batch.failed,
            "canceled": batch.canceled,
        }

    @extend_schema_field(BatchCallbackSerializer)
    def get_callback(self, batch: Batch) -> dict[str, Any]:
        return {
            "url": batch.callback_url,
            "status": batch.callback_status,
            "webhook_id": str(batch.delivery_id),
            "attempts": CallbackAttemptSerializer(batch.callback_attempts, many=True).data,
        }


class BatchCreatedSerializer(BatchSerializer):
    job_ids = serializers.ListField(
        child=serializers.UUIDField(), read_only=True, help_text="The jobs' ids, in the order they were requested."
    )

    class Meta(BatchSerializer.Meta):
        fields = [*BatchSerializer.Meta.fields, "job_ids"]
        read_only_fields = fields


class BatchJobSerializer(JobSerializer):
    """A job of a batch: the job, and its position in the batch's requests."""

    index = serializers.IntegerField(source="batch_index", read_only=True, help_text="Its request's position (from 0).")

    class Meta(JobSerializer.Meta):
        fields = [*JobSerializer.Meta.fields, "index"]
        read_only_fields = fields


class UploadSerializer(serializers.ModelSerializer):
    class Meta:
        model = Upload
        fields = ["id", "length", "offset", "created_at", "expires_at"]
        read_only_fields = fields

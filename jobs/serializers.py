from typing import Any
from urllib.parse import urlsplit

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema_field
from rest_framework import serializers

from jobs.encryption import masked_input, open_result
from jobs.kind_settings import get_kind_settings
from jobs.kinds import KINDS, Kind
from jobs.models import CallbackAttempt, CallbackStatus, Job, JobMode, JobStatus
from jobsite.errors import CallbackUrlForbidden
from jobsite.fields import HTTP_URL_PATTERN, ListedChoiceField, StrictCharField, matches_http_url

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
    return CallbackUrlField(
        max_length=CALLBACK_URL_MAX_LENGTH,
        help_text="Receives the final job as a signed webhook (Standard Webhooks).",
        **kwargs,
    )


def _kind_request_class(kind: Kind, mode: str) -> type[serializers.Serializer]:
    """The submission body for one kind in one mode: the envelope around the kind's own input serializer."""
    input_required = any(field.required for field in kind.serializer_class().fields.values())
    input_options: dict[str, Any] = {} if input_required else {"default": dict}
    fields: dict[str, Any] = {
        "kind": ListedChoiceField(choices=[kind.name]),
        "input": kind.serializer_class(required=input_required, **input_options),
    }
    if mode == JobMode.ASYNC:
        fields["callback_url"] = callback_url_field(required=False)
    name = f"{kind.name.title()}{mode.title()}JobRequest"
    return type(name, (serializers.Serializer,), {**fields, "__doc__": f"A `{kind.name}` job ({mode})."})


KIND_REQUESTS: dict[str, dict[str, type[serializers.Serializer]]] = {
    mode: {name: _kind_request_class(kind, mode) for name, kind in sorted(KINDS.items())}
    for mode in (JobMode.SYNC, JobMode.ASYNC)
}
"""Per mode, per kind: the serializer that validates a submission and documents it (one source)."""


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
        if mode != JobMode.ASYNC and "callback_url" in self.initial_data:
            raise serializers.ValidationError({"callback_url": ["Only async jobs take a callback_url."]})
        request = KIND_REQUESTS[mode][attrs["kind"]](data=self.initial_data)
        request.is_valid(raise_exception=True)
        return {"callback_url": "", **request.validated_data, "input": dict(request.validated_data["input"])}


class CallbackAttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = CallbackAttempt
        fields = ["n", "at", "status_code", "error", "duration_ms"]


class JobErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class JobCallbackSerializer(serializers.Serializer):
    url = serializers.CharField(allow_blank=True, help_text="The callback URL, or empty.")
    status = serializers.ChoiceField(choices=CallbackStatus.choices)
    attempts = CallbackAttemptSerializer(many=True)


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


class JobSerializer(serializers.ModelSerializer):
    input = serializers.SerializerMethodField()
    result = serializers.SerializerMethodField()
    error = serializers.SerializerMethodField()
    callback = serializers.SerializerMethodField()
    attempt_log = AttemptLogEntrySerializer(many=True, read_only=True)

    class Meta:
        model = Job
        fields = [
            "id", "kind", "mode", "status", "input", "result", "error", "cost", "attempts", "attempt_log",
            "cached", "created_at", "started_at", "finished_at", "queue_wait_ms", "run_ms", "callback",
        ]  # fmt: skip
        read_only_fields = fields

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
        status = job.callback_status
        # The job row is read before its attempts: a 2xx last attempt committed in between says the status.
        if status == CallbackStatus.PENDING and rows and 200 <= (rows[-1].status_code or 0) < 300:
            status = CallbackStatus.DELIVERED
        return {"url": job.callback_url, "status": status, "attempts": CallbackAttemptSerializer(rows, many=True).data}


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
    concurrency = _ConcurrencySerializer()


class LimitsSerializer(serializers.Serializer):
    balance = serializers.IntegerField(help_text="Credits available.")
    endpoints = _EndpointLimitsSerializer(many=True)

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from jobs.encryption import masked_input, open_result
from jobs.kinds import KINDS
from jobs.models import CallbackAttempt, CallbackStatus, Job, JobMode, JobStatus
from jobs.policies import get_kind_settings


class JobRequestSerializer(serializers.Serializer):
    """The submission envelope; `input` is validated by the kind's own serializer."""

    kind = serializers.ChoiceField(choices=sorted(KINDS))
    input = serializers.DictField(default=dict)
    # Judged by the SSRF guard in job_submit (400 callback_url_forbidden), not by a URL pattern.
    callback_url = serializers.CharField(max_length=2048, required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("callback_url") and self.context.get("mode") != JobMode.ASYNC:
            raise serializers.ValidationError({"callback_url": ["Only async jobs take a callback_url."]})
        kind_input = KINDS[attrs["kind"]].serializer_class(data=attrs["input"])
        if not kind_input.is_valid():
            raise serializers.ValidationError({"input": kind_input.errors})
        attrs["input"] = dict(kind_input.validated_data)
        return attrs


class CallbackAttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = CallbackAttempt
        fields = ["n", "at", "status_code", "error", "duration_ms"]


class JobErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class JobCallbackSerializer(serializers.Serializer):
    url = serializers.CharField(allow_blank=True)
    status = serializers.CharField()
    attempts = CallbackAttemptSerializer(many=True)


class JobSerializer(serializers.ModelSerializer):
    input = serializers.SerializerMethodField()
    result = serializers.SerializerMethodField()
    error = serializers.SerializerMethodField()
    callback = serializers.SerializerMethodField()

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
    """`created_after` / `created_before` (ISO 8601, exclusive bounds), served by the created_at indexes."""

    created_after = serializers.DateTimeField(required=False, help_text="Only jobs created after this instant.")
    created_before = serializers.DateTimeField(required=False, help_text="Only jobs created before this instant.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        after, before = attrs.get("created_after"), attrs.get("created_before")
        if after and before and after >= before:
            raise serializers.ValidationError({"created_before": ["Must be later than created_after."]})
        return attrs


class JobListQuerySerializer(CreatedRangeSerializer):
    mode = serializers.ChoiceField(choices=JobMode.choices, required=False)
    status = serializers.ChoiceField(choices=JobStatus.choices, required=False)
    kind = serializers.ChoiceField(choices=sorted(KINDS), required=False)


class ExportQuerySerializer(CreatedRangeSerializer):
    format = serializers.ChoiceField(choices=["jsonl", "csv"], default="jsonl")


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

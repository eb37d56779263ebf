from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.requests import StaffHttpRequest
from jobs.batches import batch_cancel
from jobs.forms import KindSettingsForm
from jobs.kinds import KINDS
from jobs.models import (
    Batch,
    BatchStatus,
    CallbackAttempt,
    CallbackStatus,
    Job,
    JobStatus,
    KindSettings,
    Upload,
    WebhookSecret,
)
from jobs.services import job_cancel, job_requeue
from jobs.webhooks import webhook_delivery_restart
from jobsite.admin import PolicyAdmin, ScaleAdmin

SHORT_ID_DIGITS = 8
"""Hex digits of a job id in the change list: unique enough to read, one line at 1366 px."""


class CallbackAttemptInline(admin.TabularInline):
    model = CallbackAttempt
    extra = 0
    can_delete = False
    readonly_fields = ["n", "at", "status_code", "error", "duration_ms"]

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class KindFilter(admin.SimpleListFilter):
    """The kinds come from the registry: a distinct-value filter would run SELECT DISTINCT over every job."""

    title = "kind"
    parameter_name = "kind"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(name, name) for name in sorted(KINDS)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Job]) -> QuerySet[Job]:
        return queryset.filter(kind=self.value()) if self.value() else queryset


@admin.register(Job)
class JobAdmin(ScaleAdmin):
    """Jobs are records: read-only, changed only through the actions below. No date drill-down: it runs
    DISTINCT date_trunc over the whole table; the API's created_after/created_before filter by date."""

    list_display = [
        "short_id",
        "owner",
        "kind",
        "mode",
        "status",
        "cost",
        "attempts",
        "cached",
        "created",
        "run_ms",
        "webhook",
    ]
    list_filter = ["status", "mode", KindFilter, "cached", "callback_status"]
    search_fields = ["id", "owner__username"]
    search_help_text = "A job id or its first hex digits (at least 4), or a username or its beginning."
    id_search_field = "id"
    username_search_field = "owner__username"
    inlines = [CallbackAttemptInline]
    actions = ["requeue_failed", "cancel_queued", "redeliver_webhook"]

    def get_readonly_fields(self, request: HttpRequest, obj: Job | None = None) -> list[str]:
        return [field.name for field in Job._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        return False  # a view page, without Save buttons; the actions still apply

    @admin.display(description="id", ordering="id")
    def short_id(self, job: Job) -> str:
        """The first 8 hex digits: unique enough to read, one line at 1366 px; search takes the full id."""
        return str(job.id)[:SHORT_ID_DIGITS]

    @admin.display(description="created", ordering="created_at")
    def created(self, job: Job) -> str:
        return job.created_at.strftime("%Y-%m-%d %H:%M:%S")

    @admin.display(description="webhook", ordering="callback_status")
    def webhook(self, job: Job) -> str:
        return job.get_callback_status_display()

    @admin.action(description="Requeue selected failed jobs")
    def requeue_failed(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        requeued = sum(job_requeue(job_id=job.pk) for job in queryset.filter(status=JobStatus.FAILED))
        self.message_user(request, f"Requeued {requeued} failed job(s).", messages.SUCCESS)

    @admin.action(description="Cancel selected queued jobs")
    def cancel_queued(self, request: StaffHttpRequest, queryset: QuerySet[Job]) -> None:
        canceled = 0
        for job in queryset.filter(status=JobStatus.QUEUED):
            job_cancel(user=request.user, job_id=job.pk)
            canceled += 1
        self.message_user(request, f"Canceled {canceled} queued job(s).", messages.SUCCESS)

    @admin.action(description="Redeliver the webhook of selected finished jobs")
    def redeliver_webhook(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        candidates = queryset.exclude(callback_url="").exclude(callback_status=CallbackStatus.PENDING)
        redelivered = sum(webhook_delivery_restart(job_id=job.pk) for job in candidates)
        self.message_user(request, f"Redelivering {redelivered} webhook(s).", messages.SUCCESS)


@admin.register(Batch)
class BatchAdmin(ScaleAdmin):
    """Batches are records: read-only, changed through the cancel action; their jobs are in the job list."""

    list_display = ["id", "owner", "status", "total", "succeeded", "failed", "canceled", "cost", "created_at"]
    list_filter = ["status", "callback_status"]
    search_fields = ["id", "owner__username"]
    search_help_text = "A batch id or its first hex digits (at least 4), or a username or its beginning."
    id_search_field = "id"
    username_search_field = "owner__username"
    actions = ["cancel_batches"]

    def get_readonly_fields(self, request: HttpRequest, obj: Batch | None = None) -> list[str]:
        return [field.name for field in Batch._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Batch | None = None) -> bool:
        return False  # a view page, without Save buttons; the action still applies

    @admin.action(description="Cancel the unstarted jobs of selected batches (refunded)")
    def cancel_batches(self, request: HttpRequest, queryset: QuerySet[Batch]) -> None:
        batches = queryset.filter(status=BatchStatus.IN_PROGRESS).select_related("owner")
        canceled = [batch_cancel(user=batch.owner, batch_id=batch.pk) for batch in batches]
        self.message_user(request, f"Canceled {len(canceled)} batch(es).", messages.SUCCESS)


@admin.register(Upload)
class UploadAdmin(admin.ModelAdmin):
    """Uploads in progress: their bytes are encrypted chunks, never shown; staff may delete one."""

    list_display = ["id", "owner", "offset", "length", "created_at", "expires_at"]
    search_fields = ["owner__username"]
    fields = readonly_fields = ("id", "owner", "offset", "length", "created_at", "expires_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Upload | None = None) -> bool:
        return False


@admin.register(WebhookSecret)
class WebhookSecretAdmin(admin.ModelAdmin):
    """Secrets are never shown; staff see who has one and when it rotates out."""

    list_display = ["user", "created_at", "expires_at"]
    search_fields = ["user__username"]
    fields = readonly_fields = ("user", "created_at", "expires_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: WebhookSecret | None = None) -> bool:
        return False  # nothing to edit: a view page without Save buttons


@admin.register(KindSettings)
class KindSettingsAdmin(PolicyAdmin):
    form = KindSettingsForm
    identity = "kind"
    list_display = [
        "kind",
        "cost",
        "cache_algorithm",
        "cache_capacity",
        "cache_ttl",
        "circuit_threshold",
        "retries",
        "time_limit",
        "updated_at",
    ]

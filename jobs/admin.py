import contextlib

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.db.models.expressions import Combinable
from django.http import HttpRequest

from accounts.requests import StaffHttpRequest
from jobs.batches import batch_cancel
from jobs.forms import KindSettingsForm
from jobs.kinds import KINDS
from jobs.models import (
    HELD_STATUSES,
    Batch,
    BatchStatus,
    CallbackAttempt,
    CallbackStatus,
    Job,
    JobDependency,
    JobMode,
    JobStatus,
    JobTombstone,
    KindSettings,
    Upload,
    WebhookSecret,
)
from jobs.selectors import jobs_awaiting_purge
from jobs.services import job_cancel, job_requeue
from jobs.webhooks import webhook_delivery_restart
from jobsite.admin import PolicyAdmin, ScaleAdmin
from jobsite.errors import NotCancellable

SHORT_ID_DIGITS = 8
"""Hex digits of a job id in the change list: unique enough to read, one line at 1366 px."""
LIST_INSTANT_FORMAT = "%Y-%m-%d\u00a0%H:%M"
"""Timestamps in the job list: to the minute (the job's page has the rest), fixed width, unbroken by a no-break space."""


class CallbackAttemptInline(admin.TabularInline):
    model = CallbackAttempt
    extra = 0
    can_delete = False
    readonly_fields = ["n", "at", "status_code", "error", "duration_ms"]

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class JobDependencyInline(admin.TabularInline):
    """The jobs this one waits for (its depends_on), as links."""

    model = JobDependency
    fk_name = "job"
    extra = 0
    can_delete = False
    fields = readonly_fields = ("depends_on",)
    verbose_name_plural = "waits for"

    def get_queryset(self, request: HttpRequest) -> QuerySet[JobDependency]:
        return super().get_queryset(request).select_related("depends_on")  # each row shows its job: one query

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


class RetentionFilter(admin.SimpleListFilter):
    """What the next purge runs will delete: the expired jobs (on the purge's own index, job_expires_id)."""

    title = "retention"
    parameter_name = "retention"
    AWAITING_PURGE = "awaiting_purge"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(self.AWAITING_PURGE, "expired, awaiting purge")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Job]) -> QuerySet[Job]:
        return queryset & jobs_awaiting_purge() if self.value() == self.AWAITING_PURGE else queryset


@admin.register(Job)
class JobAdmin(ScaleAdmin):
    """Jobs are records: read-only, changed only through the actions below. No date drill-down: it runs
    DISTINCT date_trunc over the whole table; the API's created_after/created_before filter by date."""

    list_display = [
        "short_id",
        "owner",
        "kind",
        "mode",
        "priority",
        "status",
        "cost",
        "attempts",
        "created",
        "run_ms",
        "webhook",
        "expires",
    ]
    list_filter = ["status", "mode", "priority", KindFilter, "cached", "callback_status", RetentionFilter]
    search_fields = ["id", "owner__username"]
    search_help_text = "A job id or its first hex digits (at least 4), or a username or its beginning."
    id_search_field = "id"
    username_search_field = "owner__username"
    inlines = [CallbackAttemptInline, JobDependencyInline]
    actions = ["requeue_failed", "cancel_jobs", "redeliver_webhook"]

    def get_readonly_fields(self, request: HttpRequest, obj: Job | None = None) -> list[str]:
        return [field.name for field in Job._meta.fields]

    def get_ordering(
        self, request: HttpRequest
    ) -> list[str | Combinable] | tuple[str | Combinable, ...] | tuple[()]:  # django-stubs' own type
        """Jobs awaiting purge in the purge's order, on its index; newest first otherwise."""
        if request.GET.get(RetentionFilter.parameter_name) == RetentionFilter.AWAITING_PURGE:
            return ["expires_at", "id"]
        return super().get_ordering(request)

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
        return job.created_at.strftime(LIST_INSTANT_FORMAT)

    @admin.display(description="expires at", ordering="expires_at")
    def expires(self, job: Job) -> str | None:
        return job.expires_at.strftime(LIST_INSTANT_FORMAT) if job.expires_at else None

    @admin.display(description="webhook", ordering="callback_status")
    def webhook(self, job: Job) -> str:
        return job.get_callback_status_display()

    @admin.action(description="Requeue selected failed jobs")
    def requeue_failed(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        requeued = sum(job_requeue(job_id=job.pk) for job in queryset.filter(status=JobStatus.FAILED))
        self.message_user(request, f"Requeued {requeued} failed job(s).", messages.SUCCESS)

    @admin.action(description="Cancel selected queued or held jobs, stop selected running async ones")
    def cancel_jobs(self, request: StaffHttpRequest, queryset: QuerySet[Job]) -> None:
        cancelable = queryset.filter(status__in=[JobStatus.QUEUED, *HELD_STATUSES]) | queryset.filter(
            status=JobStatus.RUNNING, mode=JobMode.ASYNC
        )
        outcomes = []
        for job in cancelable:
            with contextlib.suppress(NotCancellable):  # it finished meanwhile
                outcomes.append(job_cancel(user=request.user, job_id=job.pk).status)
        canceled, canceling = outcomes.count(JobStatus.CANCELED), outcomes.count(JobStatus.CANCELING)
        self.message_user(
            request, f"Canceled {canceled} queued or held job(s), stopping {canceling}.", messages.SUCCESS
        )

    @admin.action(description="Redeliver the webhook of selected finished jobs")
    def redeliver_webhook(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        candidates = queryset.exclude(callback_url="").exclude(callback_status=CallbackStatus.PENDING)
        redelivered = sum(webhook_delivery_restart(job_id=job.pk) for job in candidates)
        self.message_user(request, f"Redelivering {redelivered} webhook(s).", messages.SUCCESS)


@admin.register(JobTombstone)
class JobTombstoneAdmin(ScaleAdmin):
    """What is left of purged jobs (their URLs answer 410 job_expired to their owners); deleted in turn by the
    purge TOMBSTONE_RETENTION_DAYS after."""

    list_display = ["id", "owner", "expired_at", "purged_at"]
    search_fields = ["id", "owner__username"]
    search_help_text = "A job id or its first hex digits (at least 4), or a username or its beginning."
    id_search_field = "id"
    username_search_field = "owner__username"
    fields = readonly_fields = ("id", "owner", "expired_at", "purged_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: JobTombstone | None = None) -> bool:
        return False


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
        "retention",
        "pool",
        "updated_at",
    ]

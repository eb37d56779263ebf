import uuid

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import Priority, split_list
from jobsite.sizing import DEFAULT_POOL


class JobStatus(models.TextChoices):
    SCHEDULED = "scheduled"
    WAITING = "waiting"
    QUEUED = "queued"
    RUNNING = "running"
    CANCELING = "canceling"
    """A running async job whose cancel was asked: its worker stops it at its next check, then canceled."""
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})
"""A job in one of these never changes status again."""

HELD_STATUSES = frozenset({JobStatus.SCHEDULED, JobStatus.WAITING})
"""Accepted and charged, not yet queued (run_at ahead, dependencies unfinished): no concurrency slot held."""


class JobMode(models.TextChoices):
    SYNC = "sync"
    ASYNC = "async"


class CallbackStatus(models.TextChoices):
    NONE = "none"
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookEvent(models.TextChoices):
    """Events a submission may subscribe its callback_url to, besides the final webhook (always sent)."""

    STARTED = "job.started"
    PROGRESS = "job.progress"


class BatchStatus(models.TextChoices):
    IN_PROGRESS = "in_progress"
    CANCELING = "canceling"
    COMPLETED = "completed"
    CANCELED = "canceled"


class Batch(models.Model):
    """A group of async jobs submitted, charged and tracked as one; its jobs point at it (Job.batch).

    The final-state counters are kept by the transaction that makes each job final (one UPDATE ... RETURNING
    on this row), so completion is seen without counting the jobs; queued and running are counted on read.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="batches")
    endpoint = models.CharField(max_length=64, help_text="Name of the endpoint policy it was submitted under.")
    status = models.CharField(max_length=16, choices=BatchStatus.choices, default=BatchStatus.IN_PROGRESS)
    total = models.PositiveIntegerField(help_text="Jobs in the batch.")
    succeeded = models.PositiveIntegerField(default=0, help_text="Jobs that succeeded.")
    failed = models.PositiveIntegerField(default=0, help_text="Jobs that failed.")
    canceled = models.PositiveIntegerField(default=0, help_text="Jobs that were canceled.")
    cost = models.PositiveIntegerField(default=0, help_text="Credits charged for all its jobs at submission.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    in_progress_at = models.DateTimeField(
        null=True, blank=True, help_text="When a worker first started one of its jobs."
    )
    canceled_at = models.DateTimeField(null=True, blank=True, help_text="When its owner canceled it.")
    completed_at = models.DateTimeField(null=True, blank=True, help_text="When its last job became final.")
    callback_url = models.URLField(max_length=2048, blank=True)
    callback_status = models.CharField(max_length=16, choices=CallbackStatus.choices, default=CallbackStatus.NONE)
    delivery_id = models.UUIDField(default=uuid.uuid4, editable=False, help_text="webhook-id, stable across retries")
    callback_claimed = models.PositiveSmallIntegerField(
        default=0, help_text="Delivery attempts claimed so far: attempt n is claimed by moving this from n-1 to n."
    )
    callback_attempts = models.JSONField(
        default=list,
        blank=True,
        help_text="One entry per finished delivery attempt: n, at, status_code, error, duration_ms.",
    )
    trace_context = models.JSONField(default=dict, blank=True, help_text="W3C trace context of the submission.")

    class Meta:
        verbose_name_plural = "batches"
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="batch_owner_created"),
            # The reconciler's scans: unfinished batches, and completed ones whose webhook is still pending.
            models.Index(fields=["created_at"], condition=Q(completed_at__isnull=True), name="batch_open"),
            models.Index(
                fields=["completed_at"], condition=Q(callback_status="pending"), name="batch_callback_pending"
            ),
        ]

    def __str__(self) -> str:
        return f"batch {self.id} ({self.status}, {self.finished}/{self.total})"

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.canceled


class Job(models.Model):
    """The record of one job; the database, not Redis, is the source of truth for it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # No index of its own: job_owner_created (owner, -created_at) serves every lookup by owner, and each index is
    # written on every job INSERT and every claim's and outcome's UPDATE (they change indexed columns).
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, db_index=False, related_name="jobs")
    endpoint = models.CharField(max_length=64, help_text="Name of the endpoint policy it was submitted under.")
    kind = models.CharField(max_length=32)
    mode = models.CharField(max_length=8, choices=JobMode.choices)
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)
    input = models.JSONField(default=dict)
    result = models.JSONField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    cost = models.PositiveIntegerField(default=0)
    attempts = models.PositiveSmallIntegerField(default=0)
    cached = models.BooleanField(default=False)
    attempt_log = models.JSONField(
        default=list, blank=True, help_text="One entry per failed attempt: n, at, code, message, callers_fault."
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)  # set with started_at by sync jobs
    started_at = models.DateTimeField(null=True, blank=True)
    worker_name = models.CharField(max_length=100, blank=True, help_text="RQ worker that claimed the last attempt.")
    queued_at = models.DateTimeField(
        null=True, blank=True, help_text="When the job last went back on the queue; queue_wait_ms counts from here."
    )
    finished_at = models.DateTimeField(null=True, blank=True)
    queue_wait_ms = models.PositiveIntegerField(null=True, blank=True)
    run_ms = models.PositiveIntegerField(null=True, blank=True)
    callback_url = models.URLField(max_length=2048, blank=True)
    callback_status = models.CharField(max_length=16, choices=CallbackStatus.choices, default=CallbackStatus.NONE)
    delivery_id = models.UUIDField(default=uuid.uuid4, editable=False, help_text="webhook-id, stable across retries")
    trace_context = models.JSONField(default=dict, blank=True, help_text="W3C trace context of the submission.")
    client_ip = models.GenericIPAddressField(
        null=True, blank=True, help_text="Address it was submitted from (compatible routes: anonymous callers' view)."
    )
    expires_at = models.DateTimeField(
        null=True, blank=True, help_text="Set when final (its kind's retention): the purge deletes it after this."
    )
    run_at = models.DateTimeField(null=True, blank=True, help_text="Scheduled: not queued before this instant.")
    depends_on = models.JSONField(
        default=list, blank=True, help_text="Ids of the jobs it waits for (a copy of its JobDependency edges)."
    )
    allow_dependency_failure = models.BooleanField(
        default=False, help_text="Runs once its dependencies are final, whatever their outcome."
    )
    has_dependents = models.BooleanField(
        default=False, help_text="Some job depends on this one: its final state settles them (one flag, no query)."
    )
    priority = models.CharField(
        max_length=8, choices=Priority.choices, default=Priority.NORMAL, help_text="How soon it is served in its pool."
    )
    pool = models.CharField(
        max_length=32, blank=True, help_text="Worker pool (RQ queue) it was last queued on; empty: it never was."
    )
    holds_slot = models.BooleanField(
        default=True,
        help_text="Took a concurrency slot when admitted or requeued (its endpoint had a cap): its final state "
        "gives the slot back. Jobs of uncapped endpoints take none, and their finish writes no counter.",
    )
    progress = models.JSONField(
        null=True, blank=True, help_text="The last progress the kind reported: fraction, message, updated_at."
    )
    webhook_events = models.CharField(
        max_length=64, blank=True, help_text="Comma list of the events sent besides the final webhook (job.started...)."
    )
    batch = models.ForeignKey(
        Batch, null=True, blank=True, on_delete=models.CASCADE, related_name="jobs", db_index=False
    )  # indexed by the (batch, batch_index) unique constraint
    batch_index = models.PositiveIntegerField(null=True, blank=True, help_text="Its position in its batch (from 0).")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="job_owner_created"),
            models.Index(fields=["owner", "status", "-created_at"], name="job_owner_status"),
            models.Index(fields=["owner", "kind", "-created_at"], name="job_owner_kind"),
            models.Index(fields=["owner", "mode", "-created_at"], name="job_owner_mode"),
            models.Index(fields=["status", "created_at"], name="job_status_created"),
            models.Index(fields=["owner", "client_ip", "-created_at"], name="job_owner_client_ip"),
            # Scale (issue 17): the admin list's ordering and date filters, the purge's walk, and the
            # reconcilers' scans for the few rows in one state among millions (queued: job_status_created).
            models.Index(fields=["created_at", "id"], name="job_created_id"),
            models.Index(fields=["finished_at", "id"], name="job_finished_id"),
            models.Index(fields=["started_at", "id"], condition=Q(status="running"), name="job_running_started"),
            models.Index(fields=["finished_at"], condition=Q(callback_status="pending"), name="job_callback_pending"),
            # The purge's walk: only final jobs have an expiry, oldest first.
            models.Index(fields=["expires_at", "id"], condition=Q(expires_at__isnull=False), name="job_expires_id"),
            # Held jobs (jobs.holding): the reconciler's scans for due scheduled jobs and for waiting ones.
            models.Index(fields=["run_at"], condition=Q(status="scheduled"), name="job_scheduled_run_at"),
            models.Index(fields=["created_at", "id"], condition=Q(status="waiting"), name="job_waiting_created"),
            # A consumer's delivery log: their jobs with a webhook, skipping the (many) without one.
            models.Index(
                fields=["owner", "-created_at"], condition=~Q(callback_status="none"), name="job_owner_deliveries"
            ),
            # A batch's queued and running jobs, counted on read (its final ones are counters on the batch row).
            models.Index(
                fields=["batch", "status"], condition=Q(status__in=["queued", "running"]), name="job_batch_active"
            ),
        ]
        constraints = [
            # Also the index of a batch's job list and results, in submission order.
            models.UniqueConstraint(fields=["batch", "batch_index"], name="job_batch_index_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.mode} {self.id} ({self.status})"

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def webhook_event_list(self) -> list[str]:
        return split_list(self.webhook_events)

    def attempts_known_empty(self) -> None:
        """Say the job has no webhook delivery attempts, so that serialising it asks the database nothing: Django's
        private prefetch store, which job.callback_attempts.all() reads, gets an evaluated empty queryset (an
        unevaluated .none() still runs the SQL compiler, ~0.2 ms)."""
        attempts = CallbackAttempt.objects.none()
        attempts._result_cache = []
        attempts._prefetch_done = True  # type: ignore[attr-defined]  # private, as the prefetch that sets it
        self._prefetched_objects_cache = {"callback_attempts": attempts}


class JobTombstone(models.Model):
    """What is left of a purged job: enough to answer its owner 410 job_expired instead of 404."""

    id = models.UUIDField(primary_key=True, help_text="The purged job's id.")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    expired_at = models.DateTimeField(help_text="The job's expires_at.")
    purged_at = models.DateTimeField(default=timezone.now, help_text="Deleted itself TOMBSTONE_RETENTION_DAYS later.")

    class Meta:
        indexes = [models.Index(fields=["purged_at", "id"], name="tombstone_purged_id")]

    def __str__(self) -> str:
        return f"purged job {self.id}"


class JobDependency(models.Model):
    """An edge: `job` waits for `depends_on` (same owner, no cycles: jobs.dependencies keeps both rules)."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="dependency_edges")
    depends_on = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="dependent_edges")

    class Meta:
        verbose_name_plural = "job dependencies"
        constraints = [models.UniqueConstraint(fields=["job", "depends_on"], name="job_dependency_unique")]

    def __str__(self) -> str:
        return f"{self.job_id} after {self.depends_on_id}"


class ConcurrencySlot(models.Model):
    """How many of one owner's jobs under one endpoint are queued or running: a hot counter, kept exact.

    Taken in the transaction that creates the job, given back in the one that makes it final
    (jobs.concurrency), so a cap is one conditional upsert instead of a COUNT under a lock.
    """

    endpoint = models.CharField(max_length=64, help_text="Name of the endpoint policy the jobs were submitted under.")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    in_use = models.IntegerField(default=0, help_text="Queued or running jobs.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["endpoint", "owner"], name="concurrency_slot_unique")]

    def __str__(self) -> str:
        return f"{self.endpoint} of {self.owner_id}: {self.in_use}"


ATTEMPT_IN_PROGRESS = "in progress"
"""The error text of a delivery attempt that has been claimed and not yet finished."""


class CallbackAttempt(models.Model):
    """One webhook delivery attempt of a job's final JSON to its callback_url."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="callback_attempts")
    n = models.PositiveSmallIntegerField()
    at = models.DateTimeField(auto_now_add=True)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.CharField(max_length=255, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    retries_left = models.PositiveSmallIntegerField(default=0, help_text="Retries still allowed after this one.")
    give_up_at = models.DateTimeField(null=True, blank=True, help_text="No retry of this delivery starts later.")

    class Meta:
        ordering = ["job", "n"]
        constraints = [models.UniqueConstraint(fields=["job", "n"], name="callback_attempt_unique_n")]
        # The reconciler's scan for attempts whose worker died: the few in progress among millions closed.
        indexes = [models.Index(fields=["at"], condition=Q(error=ATTEMPT_IN_PROGRESS), name="attempt_in_progress")]

    def __str__(self) -> str:
        return f"attempt {self.n} of {self.job_id}"


class CacheAlgorithm(models.TextChoices):
    NONE = "none"
    FIFO = "fifo"
    LIFO = "lifo"
    LRU = "lru"
    MRU = "mru"
    LFU = "lfu"


class KindSettings(models.Model):
    """What a job of one kind costs and how it runs; defaults come from the kind's module."""

    kind = models.CharField(max_length=32, unique=True, help_text="The job kind these settings apply to.")
    cost = models.PositiveIntegerField(default=1, help_text="Credits one job of this kind costs.")
    cache_algorithm = models.CharField(
        "result cache",
        max_length=8,
        choices=CacheAlgorithm.choices,
        default=CacheAlgorithm.NONE,
        help_text="Eviction algorithm of the result cache; none: results are not cached.",
    )
    cache_capacity = models.PositiveIntegerField(
        "cache capacity", default=1000, help_text="Results kept at most (per owner unless the kind's are public)."
    )
    cache_ttl = models.PositiveIntegerField("cache TTL (s)", default=3600, help_text="Seconds a cached result lives.")
    circuit_threshold = models.PositiveIntegerField(
        "circuit threshold", default=5, help_text="Consecutive upstream failures that open a target's breaker; 0: none."
    )
    circuit_recovery = models.PositiveIntegerField(
        "circuit recovery (s)", default=30, help_text="Seconds an open breaker waits before letting one trial through."
    )
    retries = models.PositiveIntegerField(default=0, help_text="Retries of a transient failure (upstream down or 5xx).")
    retry_backoff = models.FloatField(
        "retry backoff (s)", default=1.0, help_text="Seconds, base of the jittered exponential backoff between retries."
    )
    time_limit = models.PositiveIntegerField(
        "time limit (s)", default=60, help_text="Seconds one run may take in all, retries of a sync job included."
    )
    encrypt_fields = models.CharField(
        "encrypted input fields", max_length=255, blank=True, help_text="Comma list of input fields stored encrypted."
    )
    callback_retries = models.PositiveIntegerField(
        "webhook retries", default=3, help_text="Retries of a failed webhook delivery (6: the whole schedule, ~17.5 h)."
    )
    callback_backoff = models.FloatField(
        "webhook backoff scale",
        default=1.0,
        help_text="Scale of the webhook retry schedule (1.0: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h).",
    )
    retention = models.PositiveIntegerField(
        "retention (days)",
        default=7,
        help_text="Days a final job (input, result, webhook attempts) is kept before the purge deletes it.",
    )
    pool = models.CharField(
        "worker pool",
        max_length=32,
        default=DEFAULT_POOL,
        help_text="Worker pool (RQ queue) its async jobs run on: one of RQ_POOLS, or jobs.",
    )
    typical_run_seconds = models.PositiveIntegerField(
        "typical run time (s)",
        default=1,
        help_text="Retry-After of a 202: seconds a job of this kind usually takes (see jobsite_job_run_seconds).",
    )
    updated_at = models.DateTimeField("updated", auto_now=True)

    class Meta:
        verbose_name_plural = "kind settings"
        ordering = ["kind"]

    def __str__(self) -> str:
        return f"kind.{self.kind}"

    @property
    def encrypt_field_list(self) -> list[str]:
        return split_list(self.encrypt_fields)


class IdempotencyStatus(models.TextChoices):
    IN_FLIGHT = "in_flight"
    COMPLETED = "completed"


IDEMPOTENCY_KEY_UNIQUE = "idempotency_owner_key_unique"
"""One record per user and key: a statement that records a key recorded already fails on it."""


class IdempotencyRecord(models.Model):
    """A user's Idempotency-Key: held while its first request runs, then the response it replays."""

    # No index of its own: the (owner, key) unique constraint serves every lookup by owner.
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, db_index=False, related_name="+")
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64, help_text="sha256 over method, path and canonical JSON body.")
    status = models.CharField(max_length=16, choices=IdempotencyStatus.choices, default=IdempotencyStatus.IN_FLIGHT)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True, encoder=DjangoJSONEncoder)
    response_headers = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField()
    locked_until = models.DateTimeField(
        help_text="An in-flight key that created no job may be taken over after this (its request died)."
    )
    expires_at = models.DateTimeField()
    job = models.ForeignKey(
        "Job",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The job the request created: its outcome answers the key if the request dies.",
    )

    class Meta:
        constraints = [models.UniqueConstraint(fields=["owner", "key"], name=IDEMPOTENCY_KEY_UNIQUE)]
        indexes = [models.Index(fields=["expires_at"], name="idempotency_expires")]

    def __str__(self) -> str:
        return f"{self.key} ({self.status})"


class WebhookSecret(models.Model):
    """A user's webhook signing secret (`whsec_...`), encrypted at rest; a rotated one signs until expires_at."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_secrets")
    secret_encrypted = models.TextField(help_text="Fernet token (jobsite.crypto) of the whsec_ value.")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Set on rotation; empty: the current one.")

    class Meta:
        ordering = ["user", "-created_at"]
        indexes = [models.Index(fields=["user", "expires_at"], name="webhook_secret_user_expires")]

    def __str__(self) -> str:
        return f"webhook secret of {self.user_id} ({'current' if self.expires_at is None else 'rotated'})"


class Upload(models.Model):
    """A JSONL file uploaded in chunks (tus-style offsets) to create a batch from; deleted once a batch is made
    of it, or UPLOAD_RETENTION after it was created.

    Stored in the database, not on disk under var/: every web host behind the load balancer must see the
    chunks another host received, and the database is the one store they share (and back up).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="uploads")
    length = models.PositiveBigIntegerField(help_text="Bytes announced (Upload-Length).")
    offset = models.PositiveBigIntegerField(default=0, help_text="Bytes received so far (Upload-Offset).")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField(help_text="Deleted by the reconciler after this unless a batch used it first.")

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["expires_at"], name="upload_expires")]

    def __str__(self) -> str:
        return f"upload {self.id} ({self.offset}/{self.length} bytes)"

    @property
    def complete(self) -> bool:
        return self.offset == self.length


class UploadChunk(models.Model):
    """The bytes of one PATCH of an upload, encrypted at rest (jobsite.crypto: a Fernet token)."""

    upload = models.ForeignKey(Upload, on_delete=models.CASCADE, related_name="chunks")
    offset = models.PositiveBigIntegerField(help_text="Where in the file its bytes start.")
    data = models.BinaryField(help_text="Fernet token of the chunk's bytes.")

    class Meta:
        ordering = ["upload", "offset"]
        constraints = [models.UniqueConstraint(fields=["upload", "offset"], name="upload_chunk_offset_unique")]

    def __str__(self) -> str:
        return f"chunk of {self.upload_id} at {self.offset}"

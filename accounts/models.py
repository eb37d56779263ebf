import contextlib
import ipaddress
from collections.abc import Callable

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django_otp.plugins.otp_totp.models import TOTPDevice

SCOPES = ("jobs:run", "jobs:read", "credits:read", "account:write")
"""Every scope an API key can carry (API.md)."""


def split_list(value: str) -> list[str]:
    """A comma list as stored in CharFields: stripped, empties dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]


def validate_cidr(value: str) -> None:
    try:
        ipaddress.ip_network(value.strip(), strict=False)
    except ValueError as exc:
        raise ValidationError(f"{value!r} is not an IPv4 or IPv6 network: {exc}") from None


def validate_scopes(value: str) -> None:
    unknown = sorted(set(split_list(value)) - set(SCOPES))
    if unknown:
        raise ValidationError(f"Unknown scope(s): {', '.join(unknown)}. Known: {', '.join(SCOPES)}.")


class Role(models.Model):
    """A named role; an endpoint policy lists the roles of which any one suffices."""

    name = models.SlugField(max_length=64, unique=True)
    description = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class User(AbstractUser):
    """Custom from the start so accounts can grow fields without a painful swap later."""

    roles = models.ManyToManyField(Role, blank=True, related_name="users")

    is_verified: Callable[[], bool]
    """Whether this session passed its OTP check: django_otp's OTPMiddleware sets it on request.user."""


class ApiKey(models.Model):
    """An API key `<prefix>.<secret>`: only the prefix is stored in clear, the whole key as a keyed hash."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=32, unique=True, editable=False)
    key_hash = models.CharField(
        max_length=64, editable=False, help_text="HMAC-SHA256 of the key; the key is shown once."
    )
    scopes = models.CharField(
        max_length=255, blank=True, validators=[validate_scopes], help_text=f"Comma list of: {', '.join(SCOPES)}."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix} ({self.owner})"

    @property
    def scope_list(self) -> list[str]:
        return split_list(self.scopes)


class IpAllowEntry(models.Model):
    """A network admitted where a policy turns the allowlist on: for one user, one key, or (neither) everyone."""

    cidr = models.CharField(
        max_length=64, validators=[validate_cidr], help_text="IPv4 or IPv6 network, e.g. 10.0.0.0/8"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="ip_allow_entries"
    )
    api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.CASCADE, related_name="ip_allow_entries"
    )
    note = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "IP allowlist entry"
        verbose_name_plural = "IP allowlist entries"
        ordering = ["cidr"]
        constraints = [
            models.CheckConstraint(
                condition=Q(user__isnull=True) | Q(api_key__isnull=True), name="ip_allow_entry_one_owner"
            )
        ]

    def __str__(self) -> str:
        owner = (
            f"key {self.api_key.prefix}"
            if self.api_key is not None
            else (f"user {self.user}" if self.user_id else "global")
        )
        return f"{self.cidr} ({owner})"

    def clean(self) -> None:
        if self.user_id and self.api_key_id:
            raise ValidationError("An entry belongs to a user, to an API key, or (neither) to everyone; not both.")
        with contextlib.suppress(ValueError):  # the field's validator reports it
            self.cidr = str(ipaddress.ip_network(self.cidr.strip(), strict=False))

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.cidr, strict=False)


class ApiTotpDevice(TOTPDevice):
    """The same TOTP device, checked for API calls without django-otp's per-device failure counter.

    A wrong X-MFA-Code from someone holding a stolen key must not lock the owner out of their device:
    API code checks are throttled per (credential, client IP) and per IP instead (accounts.throttling)."""

    class Meta:
        proxy = True

    def get_throttle_factor(self) -> int:
        return 0


class RateLimitAlgorithm(models.TextChoices):
    NONE = "none"
    TOKEN_BUCKET = "token_bucket"
    FIXED_WINDOW = "fixed_window"
    SLIDING_WINDOW = "sliding_window"
    THROTTLE = "throttle"
    DEBOUNCE = "debounce"


class RateLimitKey(models.TextChoices):
    USER = "user"
    IP = "ip"
    GLOBAL = "global"


class Priority(models.TextChoices):
    """How soon a queued job is served within its pool (jobs/pools.py: weighted, so low is never starved)."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


PRIORITY_RANK = {Priority.LOW: 0, Priority.NORMAL: 1, Priority.HIGH: 2}
"""Order of the priorities: a submission may ask any up to its policy's max_priority."""


class EndpointPolicy(models.Model):
    """Who may call one endpoint, how often and on what terms; defaults live in accounts.policies, the row wins."""

    name = models.CharField(max_length=64, unique=True, help_text="The endpoint it governs, e.g. jobs.sync.")
    enabled = models.BooleanField(default=True, help_text="Off: every call answers 403, whoever makes it.")
    auth_required = models.BooleanField(
        "authentication required", default=True, help_text="Off: anonymous callers are admitted (compat routes only)."
    )
    roles = models.CharField(
        "required roles", max_length=255, blank=True, help_text="Comma list; the user needs any one. Empty: no role."
    )
    scopes = models.CharField(
        "required scopes", max_length=255, blank=True, help_text="Comma list; the API key must carry all of them."
    )
    ip_allowlist = models.BooleanField(
        "IP allowlist", default=False, help_text="On: callers must come from an address in their IP allowlist entries."
    )
    mfa_required = models.BooleanField(
        "MFA required", default=False, help_text="On: calls need an X-MFA-Code header from the user's TOTP device."
    )
    rate_limit_algorithm = models.CharField(
        "rate-limit algorithm",
        max_length=16,
        choices=RateLimitAlgorithm.choices,
        default=RateLimitAlgorithm.NONE,
        help_text="How calls are counted; none: no rate limit.",
    )
    rate_limit_key = models.CharField(
        "rate-limit key",
        max_length=8,
        choices=RateLimitKey.choices,
        default=RateLimitKey.USER,
        help_text="Whose calls share one limit: each user's, each client IP's, or everyone's.",
    )
    rate_limit = models.PositiveIntegerField(
        "rate limit", default=60, help_text="Calls allowed: the bucket's capacity or the window's limit."
    )
    rate_window = models.PositiveIntegerField(
        "rate window (s)", default=60, help_text="Seconds: the window, refill period, or throttle/debounce interval."
    )
    refill_rate = models.PositiveIntegerField(
        "refill rate", default=60, help_text="Token bucket: tokens added per rate window."
    )
    max_concurrent_per_user = models.PositiveIntegerField(
        "max concurrent per user", default=0, help_text="Jobs one user may have running at once; 0: no cap."
    )
    max_concurrent_global = models.PositiveIntegerField(
        "max concurrent (all users)", default=0, help_text="Jobs all users together may have running; 0: no cap."
    )
    queue_max_depth = models.PositiveIntegerField(
        "max queue depth", default=10000, help_text="Async submissions answer 503 queue_full beyond this many queued."
    )
    max_schedule_ahead = models.PositiveIntegerField(
        "max schedule ahead (s)",
        default=604800,
        help_text="Seconds ahead an async job's run_at may be (default 7 days); 0: run_at only now or in the past.",
    )
    idempotency_ttl = models.PositiveIntegerField(
        "idempotency TTL (s)", default=86400, help_text="Seconds an Idempotency-Key replays its first response."
    )
    max_priority = models.CharField(
        "max priority",
        max_length=8,
        choices=Priority.choices,
        default=Priority.NORMAL,
        help_text="Highest `priority` a submission may ask (403 priority_not_allowed above it); low is always allowed.",
    )
    max_wait_seconds = models.PositiveIntegerField(
        "max Prefer wait (s)",
        default=30,
        help_text="Longest `Prefer: wait=N` an async submission is held for its job to finish; 0: never wait.",
    )
    max_streams_per_user = models.PositiveIntegerField(
        "max event streams per user",
        default=5,
        help_text="Job event streams (SSE) one user may have open at once; beyond it 429. 0: no cap.",
    )
    batch_max_jobs = models.PositiveIntegerField(
        "max jobs per batch", default=1000, help_text="Batches: job requests one batch may hold (inline or uploaded)."
    )
    upload_max_bytes = models.PositiveBigIntegerField(
        "max upload size (bytes)",
        default=50 * 1024 * 1024,
        help_text="Batches: the largest JSONL file an upload may announce (Upload-Length); larger: 413.",
    )
    updated_at = models.DateTimeField("updated", auto_now=True)

    class Meta:
        verbose_name_plural = "endpoint policies"
        db_table = "jobs_endpointpolicy"  # created by the jobs app before policies moved here
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def role_list(self) -> list[str]:
        return split_list(self.roles)

    @property
    def scope_list(self) -> list[str]:
        return split_list(self.scopes)

import contextlib
import ipaddress

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
        owner = f"key {self.api_key.prefix}" if self.api_key_id else (f"user {self.user}" if self.user_id else "global")
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

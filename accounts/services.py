"""Writes of accounts: API keys, roles, IP allowlist entries, TOTP devices."""

import hashlib
import hmac
import re
import secrets
import threading
import time
from datetime import datetime

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.credentials import credentials_changed
from accounts.models import ApiKey, ApiTotpDevice, IpAllowEntry, Role, User, validate_scopes
from jobsite.errors import InvalidInput, NotFound

API_KEY_PREFIX = "jsk_"
"""Marks a string as a Jobsite key (secret scanners, humans); the random part follows."""

TOTP_DEVICE_NAME = "default"
"""Each user has at most one TOTP device, under this name."""


def api_key_hash(raw_key: str) -> str:
    """Keyed hash of a whole key; keys carry 256 random bits, so a fast hash is enough."""
    return hmac.new(settings.SECRET_KEY.encode(), raw_key.encode(), hashlib.sha256).hexdigest()


def api_key_create(
    *, owner: User, name: str = "", scopes: list[str], expires_at: datetime | None = None
) -> tuple[ApiKey, str]:
    """Create a key; the plain key is returned here and never again."""
    scope_text = ",".join(dict.fromkeys(scope.strip() for scope in scopes if scope.strip()))
    try:
        validate_scopes(scope_text)
    except ValidationError as exc:
        raise InvalidInput([{"field": "scopes", "message": " ".join(exc.messages)}]) from None
    prefix = API_KEY_PREFIX + secrets.token_hex(settings.API_KEY_PREFIX_BYTES)
    raw_key = f"{prefix}.{secrets.token_urlsafe(settings.API_KEY_SECRET_BYTES)}"
    key = ApiKey.objects.create(
        owner=owner, name=name, prefix=prefix, key_hash=api_key_hash(raw_key), scopes=scope_text, expires_at=expires_at
    )
    return key, raw_key


def api_key_revoke(*, prefix: str) -> ApiKey:
    key = ApiKey.objects.filter(prefix=prefix).first()
    if key is None:
        raise NotFound(f"No API key with prefix {prefix!r}.")
    ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    credentials_changed()
    key.refresh_from_db()
    return key


_touched_at: dict[str, float] = {}
"""Per key prefix (unique, never reused), when this process last recorded its use (time.monotonic)."""
_touched_lock = threading.Lock()


def api_key_touch(*, key: ApiKey) -> None:
    """Record use at most once per API_KEY_TOUCH_INTERVAL per key and process, so a busy key costs no statement
    per request; last_used_at is therefore accurate to that interval (docs/configuration.md)."""
    interval = settings.API_KEY_TOUCH_INTERVAL
    with _touched_lock:
        if time.monotonic() - _touched_at.get(key.prefix, float("-inf")) < interval.total_seconds():
            return
        _touched_at[key.prefix] = time.monotonic()
    now = timezone.now()
    # Other processes may have written it within the interval: then this UPDATE changes no row.
    ApiKey.objects.filter(pk=key.pk).exclude(last_used_at__gte=now - interval).update(last_used_at=now)


def role_grant(*, user: User, role_name: str) -> Role:
    role, _ = Role.objects.get_or_create(name=role_name)
    user.roles.add(role)
    return role


def role_revoke(*, user: User, role_name: str) -> None:
    role = Role.objects.filter(name=role_name).first()
    if role is None:
        raise NotFound(f"No role {role_name!r}.")
    user.roles.remove(role)


def ip_allow_entry_create(
    *, cidr: str, user: User | None = None, api_key: ApiKey | None = None, note: str = ""
) -> IpAllowEntry:
    entry = IpAllowEntry(cidr=cidr, user=user, api_key=api_key, note=note)
    try:
        entry.full_clean()  # normalises the network and checks it has one owner at most
    except ValidationError as exc:
        raise InvalidInput(
            [{"field": field, "message": " ".join(messages)} for field, messages in exc.message_dict.items()]
        ) from None
    entry.save()
    return entry


def _code_looks_valid(device: TOTPDevice, code: str) -> bool:
    return bool(re.fullmatch(rf"\d{{{device.digits}}}", code))


def _totp_verify(*, user: User, code: str, confirmed: bool) -> TOTPDevice | None:
    """Verify under a row lock: django-otp's last_t then refuses the same or an older step (no replay).

    Through ApiTotpDevice: a failure here never counts against the device itself (see its docstring)."""
    with transaction.atomic():
        device = ApiTotpDevice.objects.select_for_update().filter(user=user, confirmed=confirmed).first()
        if device is None or not _code_looks_valid(device, code):
            return None
        return device if device.verify_token(code) else None


def mfa_verify(*, user: User, code: str) -> bool:
    """True if `code` is a fresh TOTP code of the user's confirmed device."""
    return _totp_verify(user=user, code=code, confirmed=True) is not None


@transaction.atomic
def totp_enrol(*, user: User) -> TOTPDevice:
    """Start enrolment: a new unconfirmed device replaces any earlier unconfirmed one."""
    if TOTPDevice.objects.filter(user=user, confirmed=True).exists():
        raise InvalidInput([{"field": "body", "message": "A TOTP device is already enrolled; remove it first."}])
    TOTPDevice.objects.filter(user=user, confirmed=False).delete()
    return TOTPDevice.objects.create(user=user, name=TOTP_DEVICE_NAME, confirmed=False)


def totp_confirm(*, user: User, code: str) -> TOTPDevice:
    device = _totp_verify(user=user, code=code, confirmed=False)
    if device is None:
        raise InvalidInput([{"field": "code", "message": "The code is not valid for the device being enrolled."}])
    TOTPDevice.objects.filter(pk=device.pk).update(confirmed=True)
    credentials_changed()
    device.confirmed = True
    return device


def totp_remove(*, user: User) -> None:
    TOTPDevice.objects.filter(user=user).delete()

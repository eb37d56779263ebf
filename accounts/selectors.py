"""Reads of accounts: API key lookup, IP allowlist matching, roles."""

import hmac
import ipaddress

from django.db.models import Q
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import ApiKey, IpAllowEntry, User
from accounts.services import api_key_hash


def api_key_get_active(*, raw_key: str) -> ApiKey | None:
    """The live key for a presented string; unknown, malformed, revoked and expired all give None alike."""
    prefix, dot, _ = raw_key.partition(".")
    if not dot or not prefix:
        return None
    key = ApiKey.objects.select_related("owner").filter(prefix=prefix).first()
    if key is None or not hmac.compare_digest(key.key_hash, api_key_hash(raw_key)):
        return None
    if key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= timezone.now()):
        return None
    if not key.owner.is_active:
        return None
    return key


def ip_allowed(*, address: str, user: User | None, api_key: ApiKey | None) -> bool:
    """Whether the address matches a global entry, one of the user's, or one of the key's."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    owners = Q(user__isnull=True, api_key__isnull=True)
    if user is not None:
        owners |= Q(user=user)
    if api_key is not None:
        owners |= Q(api_key=api_key)
    return any(ip in entry.network for entry in IpAllowEntry.objects.filter(owners).only("cidr"))


def user_role_names(*, user: User) -> set[str]:
    return set(user.roles.values_list("name", flat=True))


def user_has_mfa(*, user: User) -> bool:
    return TOTPDevice.objects.filter(user=user, confirmed=True).exists()

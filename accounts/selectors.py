"""Reads of accounts: API key lookup, IP allowlist matching, roles, MFA enrolment.

What every request reads is cached per process (credentials_cache, invalidated by accounts.credentials);
the rows are shared by concurrent requests and must not be modified. What a request decides is checked
anew on every request against the cached row: the key's hash, its revocation, its expiry, its owner.
"""

import hmac
import ipaddress

from django.db.models import Q
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import ApiKey, IpAllowEntry, User
from accounts.services import api_key_hash
from jobsite.process_cache import credentials_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _api_key_by_prefix(prefix: str) -> ApiKey | None:
    def load() -> ApiKey | None:
        return ApiKey.objects.select_related("owner").filter(prefix=prefix).first()

    # Unknown prefixes are not kept: anyone can invent them.
    return credentials_cache.get((ApiKey, prefix), load, keep_none=False)


def api_key_get_active(*, raw_key: str) -> ApiKey | None:
    """The live key for a presented string; unknown, malformed, revoked and expired all give None alike."""
    prefix, dot, _ = raw_key.partition(".")
    if not dot or not prefix:
        return None
    key = _api_key_by_prefix(prefix)
    if key is None or not hmac.compare_digest(key.key_hash, api_key_hash(raw_key)):
        return None
    if key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= timezone.now()):
        return None
    if not key.owner.is_active:
        return None
    return key


def _allowed_networks(*, user: User | None, api_key: ApiKey | None) -> tuple[Network, ...]:
    def load() -> tuple[Network, ...]:
        owners = Q(user__isnull=True, api_key__isnull=True)
        if user is not None:
            owners |= Q(user=user)
        if api_key is not None:
            owners |= Q(api_key=api_key)
        return tuple(entry.network for entry in IpAllowEntry.objects.filter(owners).only("cidr"))

    owner_ids = (user.pk if user is not None else None, api_key.pk if api_key is not None else None)
    return credentials_cache.get((IpAllowEntry, owner_ids), load)


def ip_allowed(*, address: str, user: User | None, api_key: ApiKey | None) -> bool:
    """Whether the address matches a global entry, one of the user's, or one of the key's."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in _allowed_networks(user=user, api_key=api_key))


def user_role_names(*, user: User) -> frozenset[str]:
    return credentials_cache.get(("roles", user.pk), lambda: frozenset(user.roles.values_list("name", flat=True)))


def user_has_mfa(*, user: User) -> bool:
    return credentials_cache.get(
        ("mfa", user.pk), lambda: bool(TOTPDevice.objects.filter(user=user, confirmed=True).exists())
    )

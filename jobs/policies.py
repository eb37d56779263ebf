"""Endpoint policies and kind settings: defaults defined once here, the database row wins.

Rows are cached per process; any save bumps a version in Redis, and every process re-checks that
version at most every POLICY_CHECK_INTERVAL seconds, so an edit is seen everywhere without a restart.
"""

import contextlib
import threading
import time
import uuid
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from redis.exceptions import RedisError

from jobs.kinds import KINDS
from jobs.models import EndpointPolicy, KindSettings, RateLimitAlgorithm, RateLimitKey
from jobsite.redis import get_redis, redis_key

POLICY_VERSION_KEY = redis_key("policy", "version")
"""A fresh random token on every policy or kind-settings change; processes compare it with what they cached.

Random rather than a counter: after Redis loses the key (flush, restart) a counter could repeat a
version some process has already cached, and that process would keep a stale row."""

_JOB_SUBMIT = {
    "scopes": "jobs:run",
    "rate_limit_algorithm": RateLimitAlgorithm.TOKEN_BUCKET,
    "rate_limit_key": RateLimitKey.USER,
    "rate_limit": 2000,
    "rate_window": 60,
    "refill_rate": 2000,
}
_COMPAT = {
    # Anonymous access is off unless staff (or the run command's demo, seed_demo) turn it on.
    "auth_required": True,
    "rate_limit_algorithm": RateLimitAlgorithm.FIXED_WINDOW,
    # Per user, anonymous callers per IP: anonymous traffic never spends an authenticated user's quota.
    "rate_limit_key": RateLimitKey.USER,
    "rate_limit": 1200,
    "rate_window": 60,
}

SYNC_MAX_CONCURRENT_PER_USER = 4
"""Default cap on one user's sync jobs at a time: each holds a web thread while it runs, and the run
command's web tier has 16 (2 gunicorn workers x 8 threads), so no single user can take it over."""

ENDPOINT_DEFAULTS: dict[str, dict[str, Any]] = {
    "jobs.sync": {**_JOB_SUBMIT, "max_concurrent_per_user": SYNC_MAX_CONCURRENT_PER_USER},
    "jobs.async": {**_JOB_SUBMIT, "max_concurrent_per_user": 1000},
    "jobs.read": {"scopes": "jobs:read"},
    "credits.read": {"scopes": "credits:read"},
    "compat.sync": {**_COMPAT},
    # No per-user cap: every anonymous caller shares one owner; the per-IP rate limit governs them.
    "compat.async": {**_COMPAT},
    "compat.read": {**_COMPAT},
    "account.read": {},
    "auth.token": {
        "rate_limit_algorithm": RateLimitAlgorithm.TOKEN_BUCKET,
        "rate_limit_key": RateLimitKey.USER,
        "rate_limit": 60,
        "rate_window": 60,
        "refill_rate": 60,
    },
    # Prometheus scrapes anonymously by convention; the counters hold no per-user data. Staff may require more.
    "metrics.read": {"auth_required": False},
    "account.write": {
        "scopes": "account:write",
        "rate_limit_algorithm": RateLimitAlgorithm.TOKEN_BUCKET,
        "rate_limit_key": RateLimitKey.USER,
        "rate_limit": 30,
        "rate_window": 60,
        "refill_rate": 30,
    },
}
"""Every endpoint policy that exists, with what differs from the model's field defaults."""

AUTHENTICATED_ALSO_GOVERNED_BY = {
    "compat.sync": "jobs.sync",
    "compat.async": "jobs.async",
    "compat.read": "jobs.read",
}
"""A caller who authenticated on a compatible route is also held to the API policy of the same action:
a key gets nothing through `/sync` that `/api/v1/jobs/sync/` would refuse it (scopes, IP, MFA, rate limit)."""


def kind_defaults(kind_name: str) -> dict[str, Any]:
    kind = KINDS[kind_name]
    return {
        "cost": kind.cost,
        # On by default only where one entry serves every user; a per-owner cache is the staff's choice.
        "cache_algorithm": "lru" if kind.cacheable and kind.public_results else "none",
        "time_limit": kind.time_limit,
        "retries": kind.retries,
        "encrypt_fields": ",".join(kind.sensitive_fields),
        "circuit_threshold": 5 if kind.circuit_target else 0,
    }


class _PolicyCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[type, str], Any] = {}
        self._version: bytes | None = None
        self._checked_at = float("-inf")

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._checked_at = float("-inf")

    def _revalidate(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < settings.POLICY_CHECK_INTERVAL:
            return
        try:
            version = get_redis().get(POLICY_VERSION_KEY)
        except RedisError:
            version = None  # cannot tell: re-read the database rather than trust a stale copy
            self._entries.clear()
        if version != self._version:
            self._entries.clear()
            self._version = version
        self._checked_at = now

    def get(self, model: type, name: str, load: Any) -> Any:
        with self._lock:
            self._revalidate()
            key = (model, name)
            if key not in self._entries:
                self._entries[key] = load()
            return self._entries[key]


_cache = _PolicyCache()


def get_endpoint_policy(name: str) -> EndpointPolicy:
    """The policy for an endpoint name; an unsaved row built from the defaults if none is stored."""
    if name not in ENDPOINT_DEFAULTS:
        raise KeyError(f"unknown endpoint policy {name!r}")

    def load() -> EndpointPolicy:
        row = EndpointPolicy.objects.filter(name=name).first()
        return row or EndpointPolicy(name=name, **ENDPOINT_DEFAULTS[name])

    return _cache.get(EndpointPolicy, name, load)


def get_kind_settings(kind_name: str) -> KindSettings:
    """The settings for a kind; an unsaved row built from the kind's defaults if none is stored."""

    def load() -> KindSettings:
        row = KindSettings.objects.filter(kind=kind_name).first()
        return row or KindSettings(kind=kind_name, **kind_defaults(kind_name))

    return _cache.get(KindSettings, kind_name, load)


def policies_changed() -> None:
    """Tell every process (this one at once) that policies changed."""
    _cache.clear()
    # Without Redis, other processes re-read the database on their own Redis errors.
    with contextlib.suppress(RedisError):
        get_redis().set(POLICY_VERSION_KEY, uuid.uuid4().hex)


@receiver([post_save, post_delete], sender=EndpointPolicy)
@receiver([post_save, post_delete], sender=KindSettings)
def _on_policy_change(**kwargs: Any) -> None:
    # After commit: a version bumped earlier could let another process cache the old row under the new version.
    _cache.clear()
    transaction.on_commit(policies_changed)

"""Per-process caches of rows every request reads (policies, kind settings, API keys and their owners), invalidated everywhere
at once: any change sets a fresh version token in Redis, and every process re-checks that token at most every
POLICY_CHECK_INTERVAL seconds."""

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Hashable
from typing import TypeVar

from django.conf import settings
from redis.exceptions import RedisError

from jobsite.redis import get_redis, redis_key

T = TypeVar("T")

SETTINGS_VERSION_KEY = redis_key("policy", "version")
"""A fresh random token on every change of a cached row; processes compare it with what they cached.

Random rather than a counter: after Redis loses the key (flush, restart) a counter could repeat a
version some process has already cached, and that process would keep a stale row."""


class VersionedCache:
    """Entries loaded on first use, all dropped when the Redis version token changes (or cannot be read)."""

    def __init__(self, version_key: str) -> None:
        self._version_key = version_key
        self._lock = threading.Lock()
        self._entries: dict[Hashable, object] = {}
        self._version: bytes | str | None = None
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
            version = get_redis().get(self._version_key)
        except RedisError:
            version = None  # cannot tell: re-read the database rather than trust a stale copy
            self._entries.clear()
        if version != self._version:
            self._entries.clear()
            self._version = version
        self._checked_at = now

    def get(self, key: Hashable, load: Callable[[], T], *, keep_none: bool = True) -> T:
        """The entry, loaded on a miss; `keep_none=False` stores no None (keys a caller invents: unbounded)."""
        with self._lock:
            self._revalidate()
            if key in self._entries:
                return self._entries[key]  # type: ignore[return-value]
            value = load()
            if value is not None or keep_none:
                self._entries[key] = value
            return value

    def changed(self) -> None:
        """Tell every process (this one at once) that a cached row changed."""
        self.clear()
        # Without Redis, other processes re-read the database on their own Redis errors.
        with contextlib.suppress(RedisError):
            get_redis().set(self._version_key, uuid.uuid4().hex)


CREDENTIALS_VERSION_KEY = redis_key("credentials", "version")
"""The version token of credentials_cache: its own, so a key's revocation leaves cached policies alone."""

settings_cache = VersionedCache(SETTINGS_VERSION_KEY)
"""The one cache of staff-edited settings rows (endpoint policies, kind settings) and what depends on them."""

credentials_cache = VersionedCache(CREDENTIALS_VERSION_KEY)
"""What every authenticated request reads about its caller: API keys with their owners, roles, IP allowlist
entries, MFA enrolment (accounts.selectors; invalidated by accounts.credentials)."""

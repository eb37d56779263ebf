"""The one Redis connection factory, and the key prefix every Jobsite key lives under."""

from collections.abc import Sequence
from functools import lru_cache

from django.conf import settings
from redis import Redis
from redis.client import Pipeline
from redis.commands.core import Script
from redis.typing import EncodableT

KEY_PREFIX = "jobsite:"
"""Every key Jobsite writes starts with this (RQ keeps its own `rq:` prefix)."""


LUA_NOW_MS = """
-- redis_now_ms(): Redis server time in whole milliseconds. Reads no KEYS and no ARGV.
local function redis_now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""
"""The one Lua reading of the clock: prepend it to a script that needs the time, then call redis_now_ms().

Server time, so every web and worker process reads one clock whatever their own clocks say."""


def redis_key(*parts: object) -> str:
    """Build a namespaced key: redis_key("policy", "version") -> "jobsite:policy:version"."""
    return KEY_PREFIX + ":".join(str(part) for part in parts)


@lru_cache(maxsize=1)
def get_redis() -> Redis:
    """Shared client (thread-safe pool) with short timeouts, so a dead Redis never hangs a request."""
    return Redis.from_url(
        settings.REDIS_URL,
        socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
        socket_connect_timeout=settings.REDIS_SOCKET_TIMEOUT,
        health_check_interval=30,
    )


BLOCK_MAX_SECONDS = 10.0
"""Longest one blocking read (XREAD BLOCK) waits; longer waits are several reads, so the blocking client's
socket timeout stays short enough that a dead Redis is noticed."""


@lru_cache(maxsize=1)
def get_blocking_redis() -> Redis:
    """A second pool for blocking reads: its socket timeout covers BLOCK_MAX_SECONDS, the shared one's does not."""
    return Redis.from_url(
        settings.REDIS_URL,
        socket_timeout=BLOCK_MAX_SECONDS + settings.REDIS_SOCKET_TIMEOUT,
        socket_connect_timeout=settings.REDIS_SOCKET_TIMEOUT,
        health_check_interval=30,
    )


@lru_cache(maxsize=64)
def _script(source: str) -> Script:
    return get_redis().register_script(source)


def run_lua(source: str, *, keys: list[str], args: Sequence[EncodableT], client: Redis | None = None) -> object:
    """Run a Lua script by its SHA (registered once per process; redis-py reloads it after a Redis restart).

    `client`: another connection or a pipeline (the script then runs inside its transaction). A pipeline gets the
    script whole (EVAL): by SHA, redis-py would first ask SCRIPT EXISTS, a round trip of its own before the pipeline's."""
    if isinstance(client, Pipeline):
        return client.eval(source, len(keys), *keys, *args)
    return _script(source)(keys=keys, args=args, client=client or get_redis())

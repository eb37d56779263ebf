"""Counted leases in Redis: at most N holders of one key at a time, each lease ending on its own if its holder dies.

Webhook attempts use one per receiver host (CALLBACK_MAX_PER_HOST), job event streams one per user
(EndpointPolicy.max_streams_per_user).
"""

import uuid
from typing import cast

from jobsite.redis import get_redis, run_lua

LEASE_ACQUIRE = """
-- KEYS[1]  sorted set: one member per lease held, scored by the lease's end (ms)
-- ARGV[1]  leases allowed at once, ARGV[2] lease (ms), ARGV[3] the new lease's unique member
-- Expired leases (their holder died) are dropped first; returns {acquired (0|1), ms until the next lease ends}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, tonumber(first[2]) - now}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return {1, 0}
"""


def lease_acquire(key: str, *, slots: int, lease_ms: int) -> tuple[str, str] | None:
    """A lease on `key` (one Lua call), or None while `slots` leases are held."""
    member = uuid.uuid4().hex
    acquired, _ = cast(list[int], run_lua(LEASE_ACQUIRE, keys=[key], args=[slots, lease_ms, member]))
    return (key, member) if acquired else None


def lease_release(lease: tuple[str, str]) -> None:
    key, member = lease
    get_redis().zrem(key, member)

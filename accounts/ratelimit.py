"""Exact rate limiters: one atomic Lua script per algorithm, one round trip, Redis server time.

Every script reads the clock with TIME (so web processes never disagree about time), keeps its state
in one key that expires once the state is equivalent to "never seen", and never changes state for a
rejected call except where the algorithm itself is defined by attempts (debounce). Each script takes a
last, optional ARGV `now_ms` that overrides TIME: only tests pass it, to check semantics without sleeping.

All scripts return {allowed (0|1), remaining, reset_ms, retry_after_ms}:
remaining is the quota left after this call, reset_ms when the quota is next restored (per algorithm,
below), retry_after_ms how long a rejected caller must wait (0 when allowed).
"""

import math
import uuid
from dataclasses import dataclass, replace

from accounts.models import RateLimitAlgorithm
from jobsite.redis import get_redis, redis_key, run_lua

_NOW = """
local now = tonumber(ARGV[#ARGV])
if ARGV[#ARGV] == 'server' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

TOKEN_BUCKET = (
    """
-- KEYS[1]  hash {tokens, ts}: tokens left (fractional) and when they were counted (ms)
-- ARGV[1]  capacity (tokens), ARGV[2] refill (tokens per period), ARGV[3] period (ms), ARGV[4] now_ms|'server'
-- reset_ms: until the bucket is full again; the key expires then (a full bucket = no state)
"""
    + _NOW
    + """
local capacity = tonumber(ARGV[1])
local refill = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
if now > ts then
  if refill > 0 then
    tokens = math.min(capacity, tokens + (now - ts) * refill / period)
  end
  ts = now
end
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
local reset, retry
if refill > 0 then
  local ms_per_token = period / refill
  reset = math.ceil((capacity - tokens) * ms_per_token)
  retry = math.ceil((1 - tokens) * ms_per_token)
else
  reset = period
  retry = period
end
if allowed == 1 then retry = 0 end
if reset > 0 then
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(ts))
  redis.call('PEXPIRE', KEYS[1], reset)
else
  redis.call('DEL', KEYS[1])
end
return {allowed, math.floor(tokens), reset, retry}
"""
)

FIXED_WINDOW = (
    """
-- KEYS[1]  hash {w, n}: the current window's number (now // window) and the calls admitted in it
-- ARGV[1]  limit, ARGV[2] window (ms), ARGV[3] now_ms|'server'
-- Windows are aligned to the epoch; reset_ms: until the window ends, when the key expires
"""
    + _NOW
    + """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local current = math.floor(now / window)
local state = redis.call('HMGET', KEYS[1], 'w', 'n')
local count = 0
if tonumber(state[1]) == current then count = tonumber(state[2]) end
local reset = (current + 1) * window - now
local allowed = 0
if count < limit then
  count = count + 1
  allowed = 1
  redis.call('HSET', KEYS[1], 'w', string.format('%d', current), 'n', count)
  redis.call('PEXPIRE', KEYS[1], reset)
end
local retry = reset
if allowed == 1 then retry = 0 end
return {allowed, limit - count, reset, retry}
"""
)

SLIDING_WINDOW = (
    """
-- KEYS[1]  sorted set: one member per admitted call (unique id), scored by its time (ms); an exact log
-- ARGV[1]  limit, ARGV[2] window (ms), ARGV[3] unique member for this call, ARGV[4] now_ms|'server'
-- A call counts while now - its time < window; reset_ms: until the oldest counted call leaves the window
"""
    + _NOW
    + """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
local allowed = 0
if count < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  count = count + 1
  allowed = 1
end
local reset = window
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if oldest[2] ~= nil then reset = tonumber(oldest[2]) + window - now end
local retry = reset
if allowed == 1 then retry = 0 end
return {allowed, limit - count, reset, retry}
"""
)

THROTTLE = (
    """
-- KEYS[1]  string: time (ms) of the last admitted call
-- ARGV[1]  interval (ms), ARGV[2] now_ms|'server'
-- At most one call per interval; rejected calls change nothing; reset_ms: until the next call may pass
"""
    + _NOW
    + """
local interval = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[1]))
if last == nil or now - last >= interval then
  redis.call('SET', KEYS[1], string.format('%d', now), 'PX', interval)
  return {1, 0, interval, 0}
end
local wait = last + interval - now
return {0, 0, wait, wait}
"""
)

DEBOUNCE = (
    """
-- KEYS[1]  string: time (ms) of the last attempt, admitted or not
-- ARGV[1]  interval (ms), ARGV[2] now_ms|'server'
-- A call passes only after `interval` of quiet since the last attempt; every attempt restarts the quiet period
"""
    + _NOW
    + """
local interval = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[1]))
local allowed = 0
if last == nil or now - last >= interval then allowed = 1 end
redis.call('SET', KEYS[1], string.format('%d', now), 'PX', interval)
local retry = interval
if allowed == 1 then retry = 0 end
return {allowed, 0, interval, retry}
"""
)

SCRIPTS = {
    RateLimitAlgorithm.TOKEN_BUCKET: TOKEN_BUCKET,
    RateLimitAlgorithm.FIXED_WINDOW: FIXED_WINDOW,
    RateLimitAlgorithm.SLIDING_WINDOW: SLIDING_WINDOW,
    RateLimitAlgorithm.THROTTLE: THROTTLE,
    RateLimitAlgorithm.DEBOUNCE: DEBOUNCE,
}
"""The Lua source of each algorithm."""

SERVER_TIME = "server"
"""The `now_ms` ARGV that means: use Redis TIME."""


@dataclass(frozen=True)
class RateLimitDecision:
    """One limiter decision, with what the RateLimit / RateLimit-Policy / Retry-After headers need."""

    allowed: bool
    quota: int
    window: int
    remaining: int
    reset_ms: int
    retry_after_ms: int

    @property
    def reset_seconds(self) -> int:
        return math.ceil(self.reset_ms / 1000)

    @property
    def retry_after_seconds(self) -> int:
        return max(1, math.ceil(self.retry_after_ms / 1000))


def rate_limit_quota(*, algorithm: str, limit: int, window: int) -> int:
    """The quota an algorithm advertises: throttle and debounce admit one call per interval."""
    return 1 if algorithm in (RateLimitAlgorithm.THROTTLE, RateLimitAlgorithm.DEBOUNCE) else limit


def rate_limit_state_key(*, scope: str, algorithm: str, subject: str) -> str:
    """The Redis key of one limiter; the algorithm is part of it so a policy edit never reads a foreign type."""
    return redis_key("ratelimit", scope, algorithm, subject)


def rate_limit_hit(
    *,
    algorithm: str,
    key: str,
    limit: int,
    window: int,
    refill_rate: int = 0,
    now_ms: int | None = None,
) -> RateLimitDecision:
    """Count one call against the limiter at `key`, atomically, in one round trip (raises RedisError)."""
    window_ms = max(1, window * 1000)
    now = SERVER_TIME if now_ms is None else str(now_ms)
    if algorithm == RateLimitAlgorithm.TOKEN_BUCKET:
        args: list[object] = [limit, refill_rate, window_ms, now]
    elif algorithm == RateLimitAlgorithm.FIXED_WINDOW:
        args = [limit, window_ms, now]
    elif algorithm == RateLimitAlgorithm.SLIDING_WINDOW:
        args = [limit, window_ms, uuid.uuid4().hex, now]
    elif algorithm in (RateLimitAlgorithm.THROTTLE, RateLimitAlgorithm.DEBOUNCE):
        args = [window_ms, now]
    else:
        raise ValueError(f"unknown rate limit algorithm {algorithm!r}")
    allowed, remaining, reset_ms, retry_ms = run_lua(SCRIPTS[algorithm], keys=[key], args=args)
    return RateLimitDecision(
        allowed=bool(allowed),
        quota=rate_limit_quota(algorithm=algorithm, limit=limit, window=window),
        window=window,
        remaining=max(0, int(remaining)),
        reset_ms=max(0, int(reset_ms)),
        retry_after_ms=max(0, int(retry_ms)),
    )


def rate_limit_peek(*, algorithm: str, key: str, limit: int, window: int, refill_rate: int = 0) -> RateLimitDecision:
    """What the limiter at `key` would answer now, without counting a call (raises RedisError).

    The same script runs on a throwaway copy of the state (Redis COPY keeps the TTL), so no second
    implementation of any algorithm exists; `remaining` is what is left before that hypothetical call.
    """
    redis = get_redis()
    scratch = redis_key("ratelimit-peek", uuid.uuid4().hex)
    redis.copy(key, scratch)  # no state yet: the copy is a fresh limiter too
    try:
        decision = rate_limit_hit(algorithm=algorithm, key=scratch, limit=limit, window=window, refill_rate=refill_rate)
    finally:
        redis.delete(scratch)
    remaining = min(decision.quota, decision.remaining + int(decision.allowed))
    return replace(decision, remaining=remaining, reset_ms=0 if remaining == decision.quota else decision.reset_ms)

"""Exact rate limiters: one atomic Lua script counts a call against any number of limiters in one round trip.

Every algorithm reads the clock with TIME (so web processes never disagree about time), keeps its state
in one key that expires once the state is equivalent to "never seen", and never changes state for a
rejected call except where the algorithm itself is defined by attempts (debounce). The script takes
`now_ms` as its first ARGV, or 'server' for Redis TIME: only tests pass a time, to check semantics without
sleeping.

Every limiter answers {allowed (0|1), remaining, reset_ms, retry_after_ms}:
remaining is the quota left after this call, reset_ms when the quota is next restored (per algorithm,
below), retry_after_ms how long a rejected caller must wait (0 when allowed).
"""

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import cast

from accounts.models import RateLimitAlgorithm
from jobsite.redis import LUA_NOW_MS, get_redis, redis_key, run_lua

TOKEN_BUCKET = """
-- key: hash {tokens, ts}: tokens left (fractional) and when they were counted (ms)
-- a: capacity (tokens), refill (tokens per period), period (ms)
-- reset_ms: until the bucket is full again; the key expires then (a full bucket = no state)
algorithms.token_bucket = {arity = 3, run = function(key, a, now)
  local capacity, refill, period = tonumber(a[1]), tonumber(a[2]), tonumber(a[3])
  local state = redis.call('HMGET', key, 'tokens', 'ts')
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
    redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(ts))
    redis.call('PEXPIRE', key, reset)
  else
    redis.call('DEL', key)
  end
  return {allowed, math.floor(tokens), reset, retry}
end}
"""

FIXED_WINDOW = """
-- key: hash {w, n}: the current window's number (now // window) and the calls admitted in it
-- a: limit, window (ms)
-- Windows are aligned to the epoch; reset_ms: until the window ends, when the key expires
algorithms.fixed_window = {arity = 2, run = function(key, a, now)
  local limit, window = tonumber(a[1]), tonumber(a[2])
  local current = math.floor(now / window)
  local state = redis.call('HMGET', key, 'w', 'n')
  local count = 0
  if tonumber(state[1]) == current then count = tonumber(state[2]) end
  local reset = (current + 1) * window - now
  local allowed = 0
  if count < limit then
    count = count + 1
    allowed = 1
    redis.call('HSET', key, 'w', string.format('%d', current), 'n', count)
    redis.call('PEXPIRE', key, reset)
  end
  local retry = reset
  if allowed == 1 then retry = 0 end
  return {allowed, limit - count, reset, retry}
end}
"""

SLIDING_WINDOW = """
-- key: sorted set: one member per admitted call (unique id), scored by its time (ms); an exact log
-- a: limit, window (ms), unique member for this call
-- A call counts while now - its time < window; reset_ms: until the oldest counted call leaves the window
algorithms.sliding_window = {arity = 3, run = function(key, a, now)
  local limit, window = tonumber(a[1]), tonumber(a[2])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local count = redis.call('ZCARD', key)
  local allowed = 0
  if count < limit then
    redis.call('ZADD', key, now, a[3])
    redis.call('PEXPIRE', key, window)
    count = count + 1
    allowed = 1
  end
  local reset = window
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if oldest[2] ~= nil then reset = tonumber(oldest[2]) + window - now end
  local retry = reset
  if allowed == 1 then retry = 0 end
  return {allowed, limit - count, reset, retry}
end}
"""

THROTTLE = """
-- key: string: time (ms) of the last admitted call
-- a: interval (ms)
-- At most one call per interval; rejected calls change nothing; reset_ms: until the next call may pass
algorithms.throttle = {arity = 1, run = function(key, a, now)
  local interval = tonumber(a[1])
  local last = tonumber(redis.call('GET', key))
  if last == nil or now - last >= interval then
    redis.call('SET', key, string.format('%d', now), 'PX', interval)
    return {1, 0, interval, 0}
  end
  local wait = last + interval - now
  return {0, 0, wait, wait}
end}
"""

DEBOUNCE = """
-- key: string: time (ms) of the last attempt, admitted or not
-- a: interval (ms)
-- A call passes only after `interval` of quiet since the last attempt; every attempt restarts the quiet period
algorithms.debounce = {arity = 1, run = function(key, a, now)
  local interval = tonumber(a[1])
  local last = tonumber(redis.call('GET', key))
  local allowed = 0
  if last == nil or now - last >= interval then allowed = 1 end
  redis.call('SET', key, string.format('%d', now), 'PX', interval)
  local retry = interval
  if allowed == 1 then retry = 0 end
  return {allowed, 0, interval, retry}
end}
"""

LIMITERS = (
    """
-- KEYS[i]  the state of limiter i (its algorithm's `key`, below)
-- ARGV[1]  now_ms, or 'server' for Redis TIME; then for each limiter in turn: its algorithm's name, then
--          that algorithm's arguments `a` (as many as its arity)
-- Counts one call against each limiter in order and stops after the first that rejects it, so a refused
-- call spends nothing of the limiters after it; returns one result per limiter that ran
local algorithms = {}
"""
    + LUA_NOW_MS
    + TOKEN_BUCKET
    + FIXED_WINDOW
    + SLIDING_WINDOW
    + THROTTLE
    + DEBOUNCE
    + """
local now = tonumber(ARGV[1])
if ARGV[1] == 'server' then now = redis_now_ms() end
local results = {}
local at = 2
for i, key in ipairs(KEYS) do
  local algorithm = algorithms[ARGV[at]]
  local result = algorithm.run(key, {unpack(ARGV, at + 1, at + algorithm.arity)}, now)
  at = at + 1 + algorithm.arity
  results[i] = result
  if result[1] == 0 then break end
end
return results
"""
)
"""Every algorithm, and the loop that runs a call's limiters: one script, so one round trip per request."""

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


@dataclass(frozen=True)
class Limiter:
    """One limiter a call is counted against: its algorithm, its state's Redis key and its numbers."""

    algorithm: str
    key: str
    limit: int
    window: int
    refill_rate: int = 0

    def arguments(self) -> list[str | int]:
        """The algorithm's name and its `a` arguments, as LIMITERS takes them."""
        window_ms = max(1, self.window * 1000)
        if self.algorithm == RateLimitAlgorithm.TOKEN_BUCKET:
            return [self.algorithm, self.limit, self.refill_rate, window_ms]
        if self.algorithm == RateLimitAlgorithm.FIXED_WINDOW:
            return [self.algorithm, self.limit, window_ms]
        if self.algorithm == RateLimitAlgorithm.SLIDING_WINDOW:
            return [self.algorithm, self.limit, window_ms, uuid.uuid4().hex]
        if self.algorithm in (RateLimitAlgorithm.THROTTLE, RateLimitAlgorithm.DEBOUNCE):
            return [self.algorithm, window_ms]
        raise ValueError(f"unknown rate limit algorithm {self.algorithm!r}")

    def decision(self, result: list[int]) -> RateLimitDecision:
        allowed, remaining, reset_ms, retry_ms = result
        return RateLimitDecision(
            allowed=bool(allowed),
            quota=rate_limit_quota(algorithm=self.algorithm, limit=self.limit, window=self.window),
            window=self.window,
            remaining=max(0, int(remaining)),
            reset_ms=max(0, int(reset_ms)),
            retry_after_ms=max(0, int(retry_ms)),
        )


def rate_limit_hit_all(limiters: Sequence[Limiter], *, now_ms: int | None = None) -> list[RateLimitDecision]:
    """Count one call against each limiter in order, atomically, in one round trip (raises RedisError).

    Stops after the first rejection: the decisions returned are those of the limiters that ran."""
    if not limiters:
        return []
    args: list[str | int] = [SERVER_TIME if now_ms is None else str(now_ms)]
    for limiter in limiters:
        args += limiter.arguments()
    # LIMITERS replies {allowed, remaining, reset_ms, retry_ms} for each limiter it ran.
    results = cast(list[list[int]], run_lua(LIMITERS, keys=[limiter.key for limiter in limiters], args=args))
    return [limiter.decision(result) for limiter, result in zip(limiters, results, strict=False)]


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
    limiter = Limiter(algorithm=algorithm, key=key, limit=limit, window=window, refill_rate=refill_rate)
    return rate_limit_hit_all([limiter], now_ms=now_ms)[0]


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

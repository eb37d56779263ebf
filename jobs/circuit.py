"""Circuit breakers per upstream target (for `fetch`: per host), shared by every worker and web process.

A kind with a `circuit_target` has one breaker per target, so a failing host cuts off only jobs to that
host, and only upstream failures count (5xx, timeouts, refused connections: KindError.transient and the
time limit); our own refusals and the caller's input errors (forbidden or unresolvable URLs) neither count
nor reset it (jobs.execution.job_run).

Written in Lua rather than with pybreaker's Redis storage: pybreaker moves between states with separate
reads and writes per process (two processes can both open, or both send a half-open trial), and fixes
its thresholds when the breaker object is built, while ours are KindSettings that change at runtime.

State, one hash per (kind, target), gone KEY_TTL after its last failure: `failures` (consecutive),
`opened_at` (ms, absent while closed), `trial_until` (ms: while half-open, one job holds the trial until it reports or its lease ends). Times are Redis TIME.
"""

import itertools
from collections import Counter
from enum import StrEnum
from typing import Any, cast

from jobs.kinds import KINDS
from jobs.models import KindSettings
from jobsite.redis import LUA_NOW_MS, get_redis, redis_key, run_lua

_NOW = LUA_NOW_MS + "local now = redis_now_ms()\n"

_ACQUIRE = (
    """
-- KEYS: circuit hash.  ARGV: recovery (ms), trial lease (ms), take_trial (1: a worker about to run, 0: a submission).
-- Returns 'closed', 'trial' (half-open and this caller runs the one trial), 'half_open' (submission may queue)
-- or 'open'."""
    + _NOW
    + """
local opened_at = tonumber(redis.call('HGET', KEYS[1], 'opened_at'))
if not opened_at then return 'closed' end
if now < opened_at + tonumber(ARGV[1]) then return 'open' end
if ARGV[3] == '0' then return 'half_open' end
local trial_until = tonumber(redis.call('HGET', KEYS[1], 'trial_until'))
if trial_until and now < trial_until then return 'open' end
redis.call('HSET', KEYS[1], 'trial_until', now + tonumber(ARGV[2]))
return 'trial'
"""
)

_RECORD = (
    """
-- KEYS: circuit hash.  ARGV: failed (1/0), threshold, key ttl (ms).
-- A success closes the circuit; a failure counts, and opens it at the threshold (or re-opens a half-open one).
-- Returns the consecutive failures after this outcome."""
    + _NOW
    + """
if ARGV[1] == '0' then
  redis.call('DEL', KEYS[1])
  return 0
end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if failures >= tonumber(ARGV[2]) or redis.call('HEXISTS', KEYS[1], 'opened_at') == 1 then
  redis.call('HSET', KEYS[1], 'opened_at', now)
  redis.call('HDEL', KEYS[1], 'trial_until')
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return failures
"""
)


KEY_TTL = 3600
"""Seconds a target's breaker is remembered after its last failure (at least twice its recovery): one key
per failing host, so hosts that failed once long ago do not pile up in Redis."""

METRIC_MAX_TARGETS = 1000
"""Most breakers of one kind a metrics scrape reads."""


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    TRIAL = "trial"


def _key(kind: str, target: str) -> str:
    return redis_key("circuit", kind, target)


def circuit_target(kind_settings: KindSettings, params: dict[str, Any]) -> str | None:
    """The upstream target whose breaker governs a job with these (validated) params; None: no breaker."""
    kind = KINDS[kind_settings.kind]
    if kind.circuit_target is None or kind_settings.circuit_threshold <= 0:
        return None
    return kind.circuit_target(params)


def circuit_acquire(kind_settings: KindSettings, target: str | None, *, take_trial: bool) -> CircuitState:
    """May a job to this target go ahead? A worker (take_trial) claims the half-open trial if it is free."""
    if target is None:
        return CircuitState.CLOSED
    args = [kind_settings.circuit_recovery * 1000, kind_settings.time_limit * 1000, int(take_trial)]
    state = cast(bytes, run_lua(_ACQUIRE, keys=[_key(kind_settings.kind, target)], args=args))  # a CircuitState value
    return CircuitState(state.decode())


def circuit_record(kind_settings: KindSettings, target: str | None, *, failed: bool) -> None:
    """Report an upstream's answer: a success, or a failure of the upstream itself (never the caller's)."""
    if target is not None:
        ttl = max(KEY_TTL, 2 * kind_settings.circuit_recovery) * 1000
        run_lua(
            _RECORD, keys=[_key(kind_settings.kind, target)], args=[int(failed), kind_settings.circuit_threshold, ttl]
        )


def circuit_states(kind_settings: KindSettings) -> Counter[CircuitState]:
    """How many targets of the kind have a breaker in each state (closed: failures below the threshold)."""
    redis = get_redis()
    keys = list(itertools.islice(redis.scan_iter(match=_key(kind_settings.kind, "*"), count=500), METRIC_MAX_TARGETS))
    now_s, now_us = redis.time()
    now_ms = now_s * 1000 + now_us // 1000
    pipeline = redis.pipeline(transaction=False)
    for key in keys:
        pipeline.hget(key, "opened_at")
    states: Counter[CircuitState] = Counter()
    for opened_at in pipeline.execute():
        if opened_at is None:
            states[CircuitState.CLOSED] += 1
        elif now_ms < int(opened_at) + kind_settings.circuit_recovery * 1000:
            states[CircuitState.OPEN] += 1
        else:
            states[CircuitState.HALF_OPEN] += 1
    return states

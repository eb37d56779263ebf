"""Circuit breaker for kinds that do external I/O, its state shared by every worker and web process.

Written in Lua rather than with pybreaker's Redis storage: pybreaker moves between states with separate
reads and writes per process (two processes can both open, or both send a half-open trial), and fixes
its thresholds when the breaker object is built, while ours are KindSettings that change at runtime.

State, one hash per kind: `failures` (consecutive), `opened_at` (ms, absent while closed), `trial_until`
(ms: while half-open, one job holds the trial until it reports or its lease ends). Times are Redis TIME.
"""

from enum import StrEnum

from jobs.kinds import KINDS
from jobs.models import KindSettings
from jobsite.redis import redis_key, run_lua

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

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
-- KEYS: circuit hash.  ARGV: failed (1/0), threshold.
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
return failures
"""
)


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    TRIAL = "trial"


def _key(kind: str) -> str:
    return redis_key("circuit", kind)


def circuit_applies(kind_settings: KindSettings) -> bool:
    return KINDS[kind_settings.kind].does_io and kind_settings.circuit_threshold > 0


def circuit_acquire(kind_settings: KindSettings, *, take_trial: bool) -> CircuitState:
    """May a job of this kind go ahead? A worker (take_trial) claims the half-open trial if it is free."""
    if not circuit_applies(kind_settings):
        return CircuitState.CLOSED
    args = [kind_settings.circuit_recovery * 1000, kind_settings.time_limit * 1000, int(take_trial)]
    state = run_lua(_ACQUIRE, keys=[_key(kind_settings.kind)], args=args)
    return CircuitState(state.decode())


def circuit_record(kind_settings: KindSettings, *, failed: bool) -> None:
    """Report the outcome of one run of the kind."""
    if circuit_applies(kind_settings):
        args = [int(failed), kind_settings.circuit_threshold]
        run_lua(_RECORD, keys=[_key(kind_settings.kind)], args=args)

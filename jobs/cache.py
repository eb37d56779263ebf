"""Result cache for cacheable kinds: shared by every process in Redis, exact eviction, TTL, atomic in Lua.

Entries are per owner unless the kind's results are public (Kind.public_results): see cache_field.

One cache per (kind, algorithm), three structures under one prefix:
  entries  HASH  field -> cached value
  order    ZSET  field -> eviction score (meaning depends on the algorithm, below)
  expiry   ZSET  field -> expiry time in ms (Redis TIME, so every process shares one clock)
plus `seq`, a counter that orders insertions and accesses. Scores:
  fifo / lifo  insertion seq, untouched by hits; evict the lowest / the highest
  lru / mru    seq of the last insert or hit; evict the lowest / the highest
  lfu          hits * 2^32 + seq of the last access; evict the lowest (least frequent, then least recent)
The eviction policies are written here by hand: Redis' own maxmemory policies are per server, approximate,
and have no fifo, lifo or mru.
"""

import hashlib
import hmac
import json
from typing import Any, cast

from django.conf import settings

from jobs import metrics
from jobs.kinds import KINDS
from jobs.models import CacheAlgorithm, KindSettings
from jobsite.redis import LUA_NOW_MS, get_redis, redis_key, run_lua

_PURGE_EXPIRED = (
    LUA_NOW_MS
    + """
local now_ms = redis_now_ms()
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now_ms)
for _, field in ipairs(expired) do
  redis.call('HDEL', KEYS[1], field)
  redis.call('ZREM', KEYS[2], field)
  redis.call('ZREM', KEYS[3], field)
end
"""
)

_GET = (
    """
-- KEYS: entries, order, expiry, seq.  ARGV: field, algorithm.
-- Returns the cached value, or nil; a hit updates the field's eviction score (lru, mru, lfu)."""
    + _PURGE_EXPIRED
    + """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return nil end
local algorithm = ARGV[2]
if algorithm == 'lru' or algorithm == 'mru' then
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[4]), ARGV[1])
elseif algorithm == 'lfu' then
  local hits = math.floor(tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1])) / 4294967296) + 1
  redis.call('ZADD', KEYS[2], hits * 4294967296 + redis.call('INCR', KEYS[4]), ARGV[1])
end
return value
"""
)

_SET = (
    """
-- KEYS: entries, order, expiry, seq.  ARGV: field, value, algorithm, capacity, ttl (s).
-- Stores the value, evicting per the algorithm while the cache is full; returns the evicted fields."""
    + _PURGE_EXPIRED
    + """
local field, algorithm, capacity, ttl = ARGV[1], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local evicted = {}
if redis.call('HEXISTS', KEYS[1], field) == 0 then
  while redis.call('ZCARD', KEYS[2]) >= capacity and redis.call('ZCARD', KEYS[2]) > 0 do
    local victim
    if algorithm == 'lifo' or algorithm == 'mru' then
      victim = redis.call('ZRANGE', KEYS[2], -1, -1)[1]
    else
      victim = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
    end
    redis.call('HDEL', KEYS[1], victim)
    redis.call('ZREM', KEYS[2], victim)
    redis.call('ZREM', KEYS[3], victim)
    table.insert(evicted, victim)
  end
  local seq = redis.call('INCR', KEYS[4])
  redis.call('ZADD', KEYS[2], algorithm == 'lfu' and (4294967296 + seq) or seq, field)
elseif algorithm == 'lru' or algorithm == 'mru' then
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[4]), field)
end
redis.call('HSET', KEYS[1], field, ARGV[2])
redis.call('ZADD', KEYS[3], now_ms + ttl * 1000, field)
for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ttl) end
return evicted
"""
)


def _keys(kind: str, algorithm: str) -> list[str]:
    # The algorithm is part of the name: switching it starts an empty cache, the old one expires.
    return [redis_key("cache", kind, algorithm, part) for part in ("entries", "order", "expiry", "seq")]


def cache_field(kind: str, params: dict[str, Any], *, owner_id: int) -> str:
    """Canonical JSON of the validated input (and owner), keyed-hashed so that Redis never sees the input itself.

    Entries are the owner's own unless the kind declares its results public (a pure function of the input):
    a shared entry would tell one user what another ran, and hand over results fetched for someone else.
    """
    scope = None if KINDS[kind].public_results else owner_id
    canonical = json.dumps({"kind": kind, "input": params, "owner": scope}, sort_keys=True, separators=(",", ":"))
    return hmac.new(settings.SECRET_KEY.encode(), canonical.encode(), hashlib.sha256).hexdigest()


def _enabled(kind_settings: KindSettings) -> bool:
    return kind_settings.cache_algorithm != CacheAlgorithm.NONE and kind_settings.cache_capacity > 0


def cache_get(kind_settings: KindSettings, params: dict[str, Any], *, owner_id: int) -> Any | None:
    """The stored result for this input, as the owner may see it, or None."""
    if not _enabled(kind_settings):
        return None
    kind, algorithm = kind_settings.kind, kind_settings.cache_algorithm
    raw = cast(
        bytes | None,
        run_lua(_GET, keys=_keys(kind, algorithm), args=[cache_field(kind, params, owner_id=owner_id), algorithm]),
    )
    metrics.CACHE_LOOKUPS.labels(kind=kind, result="miss" if raw is None else "hit").inc()
    return None if raw is None else json.loads(raw)


def cache_set(kind_settings: KindSettings, params: dict[str, Any], value: Any, *, owner_id: int) -> list[str]:
    """Store a result computed for the owner; returns the fields evicted to make room."""
    if not _enabled(kind_settings):
        return []
    kind, algorithm = kind_settings.kind, kind_settings.cache_algorithm
    args: list[str | int] = [
        cache_field(kind, params, owner_id=owner_id),
        json.dumps(value),
        algorithm,
        kind_settings.cache_capacity,
        max(1, kind_settings.cache_ttl),
    ]
    evicted = cast(list[bytes], run_lua(_SET, keys=_keys(kind, algorithm), args=args))  # the fields it evicted
    return [field.decode() for field in evicted]


def cache_size(kind_settings: KindSettings) -> int:
    return get_redis().hlen(_keys(kind_settings.kind, kind_settings.cache_algorithm)[0])

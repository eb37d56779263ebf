"""The result cache evicts exactly per algorithm at capacity, expires by TTL and stays bounded under concurrency."""

import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from jobs.cache import _keys, cache_get, cache_set, cache_size
from jobs.models import KindSettings
from jobsite.redis import get_redis
from tests.waiting import wait_until

OWNER = 1
"""The user the entries are cached for (hash results are public: any owner would do)."""

KEYS = "abcde"
HITS = "bbaaeecdd"
"""After inserting a..e, these hits leave: insertion oldest a / newest e; least recently used b;
most recently used d; least frequently used c (1 hit, all others 2). Each algorithm picks a different one."""


def settings_for(algorithm: str, *, capacity: int = 5, ttl: int = 60) -> KindSettings:
    return KindSettings(kind="hash", cache_algorithm=algorithm, cache_capacity=capacity, cache_ttl=ttl)


def params(key: str) -> dict:
    return {"data": key, "iterations": 1}


@pytest.mark.parametrize("algorithm,victim", [("fifo", "a"), ("lifo", "e"), ("lru", "b"), ("mru", "d"), ("lfu", "c")])
def test_each_algorithm_evicts_the_right_entry_when_full(algorithm: str, victim: str) -> None:
    kind_settings = settings_for(algorithm)
    for key in KEYS:
        assert cache_set(kind_settings, params(key), {"v": key}, owner_id=OWNER) == []
    for key in HITS:
        assert cache_get(kind_settings, params(key), owner_id=OWNER) == {"v": key}
    assert len(cache_set(kind_settings, params("f"), {"v": "f"}, owner_id=OWNER)) == 1
    assert cache_size(kind_settings) == 5
    present = {key for key in KEYS + "f" if cache_get(settings_for(algorithm), params(key), owner_id=OWNER) is not None}
    assert present == set(KEYS + "f") - {victim}


def test_entries_expire_after_their_ttl() -> None:
    kind_settings = settings_for("lru", ttl=1)
    cache_set(kind_settings, params("a"), {"v": 1}, owner_id=OWNER)
    assert cache_get(kind_settings, params("a"), owner_id=OWNER) == {"v": 1}
    wait_until(lambda: cache_get(kind_settings, params("a"), owner_id=OWNER) is None, timeout=5)
    assert cache_size(kind_settings) == 0


@pytest.mark.parametrize("algorithm", ["fifo", "lifo", "lru", "mru", "lfu"])
def test_concurrent_hits_and_misses_stay_within_capacity(algorithm: str) -> None:
    kind_settings = settings_for(algorithm, capacity=10)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(100):
            key = str(rng.randrange(40))
            if cache_get(kind_settings, params(key), owner_id=OWNER) is None:
                cache_set(kind_settings, params(key), {"v": key}, owner_id=OWNER)

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(work, range(16)))
    entries, order, expiry, _ = _keys("hash", algorithm)
    redis = get_redis()
    assert redis.hlen(entries) == redis.zcard(order) == redis.zcard(expiry) == 10

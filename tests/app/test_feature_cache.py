"""The item-row cache of the Redis feature source (pure; a fake clock): bounded, the oldest
read dropped first, entries expire after the TTL, misses cached too; and RESP encoding."""

from __future__ import annotations

from typing import Any

import numpy as np

from app.dataplane.features import ItemCache
from app.dataplane.redis_link import encode
from models.artifacts.feature_rows import RowCodec

CODEC = RowCodec(user_vocabularies=(5,), item_vocabularies=(100, 7), dense_width=1)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def row(value: int) -> tuple[np.ndarray, np.ndarray]:
    return np.array([value, 1]), np.array([value / 10], dtype=np.float32)


def cached(cache: ItemCache, key: str) -> Any:
    """(its first index, its dense value), "miss", or ABSENT."""
    slot = int(cache.slots([key], cache.clock())[0])
    if slot < 0:
        return slot
    if cache.missing[slot]:
        return "miss"
    return int(cache.categorical[slot, 0]), float(cache.dense[slot, 0])


def test_the_cache_is_bounded_and_drops_the_oldest_read() -> None:
    cache = ItemCache(entries=2, ttl=60, codec=CODEC, clock=Clock())
    cache.put("a", *row(1))
    cache.put("b", None, None)  # a miss in the store, cached as such
    assert cached(cache, "b") == "miss"
    assert cached(cache, "a") == (1, np.float32(0.1))
    cache.put("c", *row(3))  # drops a, read first
    assert cached(cache, "a") == ItemCache.ABSENT
    assert cached(cache, "b") == "miss" and cached(cache, "c")[0] == 3
    assert len(cache.slot_of) == 2 and cache.free == []
    cache.put("a", *row(4))  # drops b; its slot is reused
    assert cached(cache, "b") == ItemCache.ABSENT and cached(cache, "a")[0] == 4
    slots = cache.slots(["c", "zz", "a"], 0.0)
    assert slots[1] == ItemCache.ABSENT and cache.categorical[slots[[0, 2]], 0].tolist() == [3, 4]


def test_entries_expire_after_the_ttl() -> None:
    clock = Clock()
    cache = ItemCache(entries=10, ttl=5, codec=CODEC, clock=clock)
    cache.put("a", *row(1))
    clock.now = 4.9
    assert cached(cache, "a") == (1, np.float32(0.1))
    clock.now = 5.0
    assert cached(cache, "a") == ItemCache.ABSENT and "a" not in cache.slot_of
    assert len(cache.free) == 10  # its slot is free again


def test_no_cache_keeps_nothing() -> None:
    cache = ItemCache(entries=0, ttl=5, codec=CODEC, clock=Clock())
    cache.put("a", *row(1))
    assert cached(cache, "a") == ItemCache.ABSENT


def test_commands_are_encoded_as_resp_arrays() -> None:
    assert encode([("GET", "k"), ("MGET", "a", b"\x00b")]) == (
        b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*3\r\n$4\r\nMGET\r\n$1\r\na\r\n$2\r\n\x00b\r\n"
    )

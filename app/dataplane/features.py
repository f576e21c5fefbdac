"""Fresh features: a rank request's user row, candidate rows and seen items read from Redis at
request time (`[features] source = "redis"`), within the request's deadline.

The lookups of every request that arrives in one turn of the event loop leave in one write on one
pipelined connection (`redis_link.py`); at most `max_pending_requests` wait for replies. A request
waits for its answers at most `timeout_ms`, or its share of the deadline if that is less. What
Redis does not give in time (a miss, a timeout, an error, Redis down, a malformed row) is scored
through the out-of-vocabulary row, as an unknown id is, counted by side and reason, reported in
the answer (`degraded`) and logged at a bounded rate: the server keeps answering, and finds Redis
again once it is back. Item rows change slowly, so they may be cached here (bounded, with a TTL);
user rows and seen items are always read fresh.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter

from app.dataplane.feature_rows import FeatureRows, Ids
from app.dataplane.redis_link import Command, RedisLink, StoreUnavailable
from app.dataplane.throttled import Throttled
from app.settings import FeatureSettings
from models.artifacts.feature_rows import KeyLayout, MalformedRow, RowCodec
from models.artifacts.feature_tables import OOV_ROW, FeatureTables

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureMetrics:
    fallbacks: Counter  # entities scored through the OOV row instead, by side and reason
    cache: Counter  # item cache lookups by result

    @classmethod
    def create(cls, registry: CollectorRegistry, prefix: str) -> FeatureMetrics:
        return cls(
            Counter(f"{prefix}_feature_fallbacks", "Rank lookups answered with the default (OOV) "
                    "row or without seen items, by side (user, item, seen) and reason (miss, "
                    "malformed, timeout, error, busy)", ["side", "reason"], registry=registry),
            Counter(f"{prefix}_feature_cache_lookups", "Item rows looked up in this process's "
                    "cache, by result (hit, miss)", ["result"], registry=registry),
        )  # fmt: skip


class ItemCache:
    """Decoded item rows by item id, in arrays allocated once: at most `entries` of them (the
    oldest read dropped first), each used for `ttl` seconds after it was read. A miss in the store
    is cached too, so an unknown candidate is not asked for on every request. Looked up a whole
    request at a time, in C (`map` over the dict, numpy over the slots): a Python call per
    candidate cost more than the model."""

    ABSENT = -1

    def __init__(self, entries: int, ttl: float, codec: RowCodec,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.entries = entries
        self.ttl = ttl
        self.clock = clock
        self.slot_of: dict[str, int] = {}  # in the order read: the first is the oldest
        self.categorical = np.zeros((entries, len(codec.item_vocabularies)), dtype=np.int64)
        self.dense = np.zeros((entries, codec.dense_width), dtype=np.float32)
        self.expires = np.zeros(entries, dtype=np.float64)
        self.missing = np.zeros(entries, dtype=bool)  # the store had no such row
        self.free = list(range(entries - 1, -1, -1))

    def slots(self, ids: Ids, now: float) -> np.ndarray:
        """Each id's slot, or ABSENT (never read, expired or dropped)."""
        if self.entries == 0:
            return np.full(len(ids), self.ABSENT, dtype=np.int64)
        found = np.fromiter(map(self.slot_of.get, ids, repeat(self.ABSENT)), dtype=np.int64,
                            count=len(ids))  # fmt: skip
        # (ABSENT indexes the last slot: harmless, masked by found >= 0.)
        stale = (found >= 0) & (self.expires[found] <= now)
        if stale.any():
            for i in np.flatnonzero(stale):
                self.drop(str(ids[int(i)]))
            found[stale] = self.ABSENT
        return found

    def put(self, item_id: str, categorical: np.ndarray | None, dense: np.ndarray | None) -> None:
        """A row read from the store, or None for a miss there."""
        if self.entries == 0:
            return
        if item_id in self.slot_of:
            self.drop(item_id)
        if not self.free:
            self.drop(next(iter(self.slot_of)))
        slot = self.free.pop()
        self.slot_of[item_id] = slot
        self.expires[slot] = self.clock() + self.ttl
        self.missing[slot] = categorical is None or dense is None
        if categorical is not None and dense is not None:
            self.categorical[slot], self.dense[slot] = categorical, dense

    def drop(self, item_id: str) -> None:
        slot = self.slot_of.pop(item_id, None)
        if slot is not None:
            self.free.append(slot)


def give_up(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(StoreUnavailable("timeout"))


@dataclass
class Lookup:
    """One request's lookups and the rows gathered so far: the cached ones at once, the OOV row
    where nothing is known yet."""

    codec: RowCodec
    tables: FeatureTables  # the version's: its out-of-vocabulary rows stand in for what is missing
    ids: Ids
    absent: np.ndarray  # candidate positions the cache did not have
    fetch: list[str]  # their ids, once each
    want_seen: bool
    categorical: np.ndarray  # [candidates, item fields]
    dense: np.ndarray
    known: np.ndarray  # bool per candidate: its row is filled in


class RedisFeatures:
    """The rows of rank requests from Redis: one process's connection and item cache."""

    def __init__(self, settings: FeatureSettings, registry: CollectorRegistry, prefix: str,
                 ) -> None:  # fmt: skip
        self.settings = settings
        self.metrics = FeatureMetrics.create(registry, prefix)
        self.link = RedisLink(settings.redis_url, settings.max_pending_requests,
                              connect_timeout=max(0.1, settings.timeout_ms / 100))  # fmt: skip
        self.caches: dict[tuple[str, RowCodec], ItemCache] = {}
        self.cache_hits = self.metrics.cache.labels(result="hit")
        self.cache_misses = self.metrics.cache.labels(result="miss")
        self.warn = Throttled("feature store", log)

    async def start(self) -> None:
        await self.link.start()
        if self.link.protocol is None:
            self.warn(f"not reachable at start-up, rank requests degrade until it is: "
                      f"{self.link.last_failure}")  # fmt: skip

    async def close(self) -> None:
        await self.link.close()

    def wait_seconds(self, deadline_seconds: float | None) -> float:
        limit = self.settings.timeout_ms / 1000
        if deadline_seconds is None:
            return limit
        return max(0.0, min(limit, deadline_seconds * self.settings.deadline_fraction))

    def cache(self, model: str, codec: RowCodec) -> ItemCache:
        """The item cache of a model's row layout (a new version with other fields: another)."""
        key = (model, codec)
        if key not in self.caches:
            while len(self.caches) >= 2:  # the served version's and the one replacing it
                self.caches.pop(next(iter(self.caches)))
            settings = self.settings
            self.caches[key] = ItemCache(settings.item_cache_entries,
                                         settings.item_cache_ttl_seconds, codec)  # fmt: skip
        return self.caches[key]

    async def rows(self, model: str, codec: RowCodec, tables: FeatureTables, user_id: str,
                   ids: Ids, want_seen: bool, deadline_seconds: float | None,
                   ) -> FeatureRows:  # fmt: skip
        """The rows of one request: the user's, each candidate's (in order), and which candidates
        the user has seen when `want_seen`."""
        keys = KeyLayout(self.settings.key_prefix, model)
        lookup = self.from_cache(model, codec, tables, keys, ids, want_seen)
        commands: list[Command] = [("GET", keys.user(user_id))]
        if lookup.fetch:
            prefix = keys.item("")
            commands.append(("MGET", *[prefix + i for i in lookup.fetch]))
        if want_seen and len(ids):
            commands.append(("SMISMEMBER", keys.seen(user_id), *map(str, ids)))
        future = self.link.send(commands)
        # A bare timer rather than asyncio.timeout(): a tenth of what the store path costs.
        timer = asyncio.get_running_loop().call_later(
            self.wait_seconds(deadline_seconds), give_up, future
        )
        try:
            replies = await future
        except StoreUnavailable as exc:
            if exc.reason == "error":
                self.warn(f"{self.settings.redis_url}: {exc.detail}")
            return self.degraded(lookup, exc.reason)
        finally:
            timer.cancel()
        return self.decoded(model, lookup, replies)

    def from_cache(self, model: str, codec: RowCodec, tables: FeatureTables, keys: KeyLayout,
                   ids: Ids, want_seen: bool) -> Lookup:  # fmt: skip
        """The rows the cache has, gathered now (before this request's own rows enter it)."""
        cache = self.cache(model, codec)
        n = len(ids)
        slots = cache.slots(ids, cache.clock())
        if n and slots.min() >= 0 and not cache.missing[slots].any():  # all cached: one gather
            self.cache_hits.inc(n)
            rows = cache.categorical[slots], cache.dense[slots]
            return Lookup(codec, tables, ids, np.empty(0, np.int64), [], want_seen, *rows,
                          np.ones(n, bool))  # fmt: skip
        categorical = np.repeat(tables.item_categorical[OOV_ROW : OOV_ROW + 1], n, axis=0)
        dense = np.repeat(tables.item_dense[OOV_ROW : OOV_ROW + 1], n, axis=0)
        found = slots >= 0
        hit = found.copy()
        hit[found] = ~cache.missing[slots[found]]
        categorical[hit], dense[hit] = cache.categorical[slots[hit]], cache.dense[slots[hit]]
        absent = np.flatnonzero(~found)
        fetch = list(dict.fromkeys(str(ids[int(i)]) for i in absent))
        self.cache_hits.inc(n - len(absent))
        self.cache_misses.inc(len(absent))
        return Lookup(codec, tables, ids, absent, fetch, want_seen, categorical, dense, hit)

    def decoded(self, model: str, lookup: Lookup, replies: list[Any]) -> FeatureRows:
        user, user_known = self.user_row(lookup, replies[0])
        rest = replies[1:]
        if lookup.fetch:
            self.fetched(model, lookup, rest.pop(0))
        seen = None
        degraded: tuple[str, ...] = ()
        if lookup.want_seen:
            reply = rest.pop(0) if len(lookup.ids) else []
            if isinstance(reply, Exception):  # e.g. the key holds another type
                self.fallback("seen", "malformed", 1, f"SMISMEMBER: {reply}")
                degraded = ("seen",)
            else:
                seen = np.asarray(reply, dtype=bool)
        return FeatureRows(user, user_known, lookup.ids, lookup.categorical, lookup.dense,
                           self.unknown(lookup), seen, degraded)  # fmt: skip

    def fetched(self, model: str, lookup: Lookup, reply: Any) -> None:
        """The MGET's rows into the request's arrays and the cache (a miss cached as one)."""
        fetch, codec = lookup.fetch, lookup.codec
        if isinstance(reply, Exception):
            self.fallback("item", "error", len(fetch), f"MGET: {reply}")
            return
        present = [i for i, raw in enumerate(reply) if isinstance(raw, bytes)]
        try:
            categorical, dense = codec.decode_items([f"item {fetch[i]}" for i in present],
                                                    [reply[i] for i in present])  # fmt: skip
        except MalformedRow:
            present, categorical, dense = self.decode_one_by_one(codec, fetch, present, reply)
        row_of = {fetch[i]: j for j, i in enumerate(present)}
        absent_ids = (str(lookup.ids[int(p)]) for p in lookup.absent)
        where = np.fromiter((row_of.get(i, -1) for i in absent_ids), dtype=np.int64,
                            count=len(lookup.absent))  # fmt: skip
        found = where >= 0
        positions = lookup.absent[found]
        lookup.categorical[positions] = categorical[where[found]]
        lookup.dense[positions] = dense[where[found]]
        lookup.known[positions] = True
        cache = self.cache(model, codec)
        for key, j in row_of.items():
            cache.put(key, categorical[j], dense[j])
        misses = [fetch[i] for i, raw in enumerate(reply) if raw is None]
        for key in misses:
            cache.put(key, None, None)
        if misses:
            self.metrics.fallbacks.labels(side="item", reason="miss").inc(len(misses))

    def unknown(self, lookup: Lookup) -> list[str]:
        return [str(lookup.ids[int(i)]) for i in np.flatnonzero(~lookup.known)]

    def user_row(self, lookup: Lookup, raw: Any) -> tuple[np.ndarray, bool]:
        if isinstance(raw, bytes):
            try:
                return lookup.codec.decode_user("the user's row", raw), True
            except MalformedRow as exc:
                self.fallback("user", "malformed", 1, str(exc))
        elif raw is None:
            self.metrics.fallbacks.labels(side="user", reason="miss").inc()
        else:
            self.fallback("user", "malformed", 1, f"GET: {raw}")
        return lookup.tables.user_categorical[OOV_ROW], False

    def decode_one_by_one(
        self, codec: RowCodec, fetch: list[str], present: list[int], reply: list[Any]
    ) -> tuple[list[int], np.ndarray, np.ndarray]:
        """The rows that decode, when one of them does not (each bad one counted and logged)."""
        kept, categorical, dense = [], [], []
        for i in present:
            try:
                c, d = codec.decode_items([f"item {fetch[i]}"], [reply[i]])
            except MalformedRow as exc:
                self.fallback("item", "malformed", 1, str(exc))
                continue
            kept.append(i)
            categorical.append(c)
            dense.append(d)
        if not kept:
            empty = codec.decode_items([], [])
            return [], empty[0], empty[1]
        return kept, np.concatenate(categorical), np.concatenate(dense)

    def degraded(self, lookup: Lookup, reason: str) -> FeatureRows:
        """No answer from the store in time: default rows but for cached items."""
        self.metrics.fallbacks.labels(side="user", reason=reason).inc()
        if lookup.fetch:
            self.metrics.fallbacks.labels(side="item", reason=reason).inc(len(lookup.fetch))
        if lookup.want_seen:
            self.metrics.fallbacks.labels(side="seen", reason=reason).inc()
        sides = ("user", *(("items",) if lookup.fetch else ()),
                 *(("seen",) if lookup.want_seen else ()))  # fmt: skip
        user = lookup.tables.user_categorical[OOV_ROW]
        return FeatureRows(user, False, lookup.ids, lookup.categorical, lookup.dense,
                           self.unknown(lookup), None, sides)  # fmt: skip

    def fallback(self, side: str, reason: str, count: int, detail: str) -> None:
        self.metrics.fallbacks.labels(side=side, reason=reason).inc(count)
        self.warn(detail)

"""`python -m models publish-features`: a built version's feature tables and seen items written
into Redis in the layout the server reads (`models/artifacts/feature_rows.py`), so the built-in
model serves from Redis unchanged (`[features] source = "redis"`). A user's own pipeline writes
the same keys as its features change."""

from __future__ import annotations

import logging

import numpy as np

from models.artifacts.feature_rows import KeyLayout, RowCodec
from models.artifacts.repository import ModelVersion

log = logging.getLogger(__name__)

CHUNK = 1000  # keys per pipelined round trip


def publish(version: ModelVersion, redis_url: str, prefix: str) -> dict[str, int]:
    """Every user row, item row and seen-item set of `version`; returns the counts written."""
    import redis

    tables = version.tables
    manifest = version.manifest
    keys = KeyLayout(prefix, manifest.model_name)
    sizes = tuple(manifest.vocabulary_sizes[f] for f in tables.categorical_fields)
    codec = RowCodec.for_tables(tables, sizes)
    try:
        client = redis.Redis.from_url(redis_url)
        client.ping()  # a wrong URL or Redis down: one clear error before anything is written
    except (redis.RedisError, ValueError) as exc:
        raise RuntimeError(f"{redis_url}: {exc}") from None
    writes: list[tuple[str, bytes]] = [
        (keys.user(str(user_id)), codec.encode_user(tables.user_categorical[row]))
        for row, user_id in enumerate(tables.user_ids, start=1)
    ]
    writes += [
        (
            keys.item(str(item_id)),
            codec.encode_item(tables.item_categorical[row], tables.item_dense[row]),
        )
        for row, item_id in enumerate(tables.item_ids, start=1)
    ]
    for start in range(0, len(writes), CHUNK):
        client.mset(dict(writes[start : start + CHUNK]))
    seen = version.load_seen_items()
    seen_sets = 0
    if seen is not None:
        indptr, item_rows = seen
        pipe = client.pipeline(transaction=False)
        for row, user_id in enumerate(tables.user_ids, start=1):
            items = item_rows[indptr[row] : indptr[row + 1]]
            key = keys.seen(str(user_id))
            pipe.delete(key)
            if len(items):
                pipe.sadd(key, *(str(tables.item_ids[i - 1]) for i in np.asarray(items)))
                seen_sets += 1
            if len(pipe) >= CHUNK:
                pipe.execute()
        pipe.execute()
    client.close()
    counts = {"users": len(tables.user_ids), "items": len(tables.item_ids), "seen": seen_sets}
    log.info("published %s to %s under %s:%s:", counts, redis_url, prefix, manifest.model_name)
    return counts

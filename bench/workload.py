"""The benchmark's requests: /v1/rank for users drawn from the test split, with N candidates
sampled from the catalog, or the whole catalog (no `candidates` field)."""

from __future__ import annotations

import numpy as np
import orjson

from models.artifacts.repository import ModelVersion

WHOLE_CATALOG = 0


def rank_bodies(version: ModelVersion, candidates: int, count: int = 256, seed: int = 0,
                ) -> list[str]:  # fmt: skip
    """`count` distinct request bodies; `candidates` = WHOLE_CATALOG ranks every item."""
    tables = version.tables
    rng = np.random.default_rng(seed)
    users = rng.choice(np.unique(version.load_test_split().user_rows), count)
    bodies = []
    for user_row in users:
        body: dict[str, object] = {"user_id": str(tables.user_ids[user_row - 1]), "k": 10}
        if candidates != WHOLE_CATALOG:
            picked = rng.choice(len(tables.item_ids), candidates, replace=False)
            body["candidates"] = [str(tables.item_ids[i]) for i in picked]
        bodies.append(orjson.dumps(body).decode())
    return bodies


def label(candidates: int) -> str:
    return "whole catalog" if candidates == WHOLE_CATALOG else f"{candidates} candidates"

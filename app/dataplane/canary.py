"""Canary versions ([canary] splits): a share of a model's traffic goes to a new version, the
same keys always to the same version (sticky: a user sees one ranker, not a mix), the rest to the
latest other version. The key is the user id for /v1/rank and V2's `routing_key` parameter
otherwise; a request without one goes to the stable version, and one that names a version gets
it. Each version's own statistics (`/v2/models/{name}/versions/{v}/stats`) count what it served."""

from __future__ import annotations

import hashlib

from app.settings import CanarySplit


def bucket(key: str) -> float:
    """A key's fixed place in [0, 1): the same on every replica and after every restart."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def to_canary(key: str | None, share: float, promoted: bool = False) -> bool:
    """Pure: whether a request with this key goes to the canary version (every one, once it
    is promoted)."""
    return promoted or (key is not None and bucket(key) < share)


def split_problem(split: CanarySplit, served: list[int]) -> str | None:
    """Pure: why the split cannot apply to a model serving `served` (None: it can), naming the
    field."""
    listed = ", ".join(map(str, served)) or "none"
    if split.version not in served:
        return f"version: {split.version} is not served (serving {listed})"
    if len([number for number in served if number != split.version]) == 0:
        return f"version: {split.version} is the only version served: nothing to split with"
    return None


def describe(model: str, split: CanarySplit | None) -> str:
    """The log's line for a split."""
    if split is None:
        return (f"canary: {model}: split removed; a request that names no version goes to the "
                "latest ready one")  # fmt: skip
    if split.promoted:
        return f"canary: {model} version {split.version} promoted: every request goes to it"
    return (f"canary: {model} version {split.version} takes {100 * split.share:.1f}% of keyed "
            "requests (sticky by key)")  # fmt: skip

"""Canary versions ([canary] splits): a share of a model's traffic goes to a new version, the
same keys always to the same version (sticky: a user sees one ranker, not a mix), the rest to the
latest other version. The key is the user id for /v1/rank and V2's `routing_key` parameter
otherwise; a request without one goes to the stable version, and one that names a version gets
it. Each version's own statistics (`/v2/models/{name}/versions/{v}/stats`) count what it served."""

from __future__ import annotations

import hashlib


def bucket(key: str) -> float:
    """A key's fixed place in [0, 1): the same on every replica and after every restart."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def to_canary(key: str | None, share: float) -> bool:
    """Pure: whether a request with this key goes to the canary version."""
    return key is not None and bucket(key) < share

"""One rank request's feature rows, wherever they came from (the version's tables or an online
store): what the ranker turns into model inputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Ids = Sequence[str] | np.ndarray  # candidate ids: a list, or the catalog's array


@dataclass(frozen=True)
class FeatureRows:
    user: np.ndarray  # the user's categorical row (int64)
    user_known: bool  # false: the out-of-vocabulary row stands in for it
    ids: Ids  # the candidates, in request order
    item_categorical: np.ndarray  # [candidates, item fields] int64
    item_dense: np.ndarray  # [candidates, dense fields] float32
    unknown: list[str]  # candidate ids scored through the out-of-vocabulary row
    seen: np.ndarray | None  # bool per candidate: seen by the user (None: not asked, or unknown)
    degraded: tuple[str, ...] = ()  # "user", "items", "seen": the store failed, defaults used

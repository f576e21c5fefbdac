"""Per-user and per-item feature rows with id-to-row maps (numpy only; the serving path uses this).

Row 0 of each table is the out-of-vocabulary row: an unknown user or item id maps there, so a
request naming an id the model never saw is scored with the side features' OOV slots, never fails.
A model input row is the user's categorical fields, then the item's, plus the item's dense fields.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path

import numpy as np
import numpy.typing as npt

OOV_ROW = 0
CATEGORICAL_INPUT = "categorical"
DENSE_INPUT = "dense"

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class FeatureTables:
    user_ids: npt.NDArray[np.str_]  # raw id of table row i + 1
    user_fields: tuple[str, ...]
    user_categorical: IntArray  # [users + 1, len(user_fields)]
    item_ids: npt.NDArray[np.str_]
    item_fields: tuple[str, ...]
    item_categorical: IntArray  # [items + 1, len(item_fields)]
    dense_fields: tuple[str, ...]
    item_dense: FloatArray  # [items + 1, len(dense_fields)]
    _user_index: dict[str, int] = field(init=False, repr=False, compare=False)
    _item_index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        expected = {
            "user_categorical": (len(self.user_ids) + 1, len(self.user_fields)),
            "item_categorical": (len(self.item_ids) + 1, len(self.item_fields)),
            "item_dense": (len(self.item_ids) + 1, len(self.dense_fields)),
        }
        for name, shape in expected.items():
            actual = getattr(self, name).shape
            if actual != shape:
                raise ValueError(f"feature table {name} has shape {actual}, expected {shape}")
        index = {str(key): row + 1 for row, key in enumerate(self.user_ids)}
        object.__setattr__(self, "_user_index", index)
        index = {str(key): row + 1 for row, key in enumerate(self.item_ids)}
        object.__setattr__(self, "_item_index", index)

    @property
    def categorical_fields(self) -> tuple[str, ...]:
        return self.user_fields + self.item_fields

    def user_rows(self, ids: Iterable[str]) -> IntArray:
        """Table rows of raw user ids; unknown ids map to the OOV row."""
        return _rows(self._user_index, ids)

    def item_rows(self, ids: Iterable[str]) -> IntArray:
        return _rows(self._item_index, ids)

    def assemble(self, user_rows: IntArray, item_rows: IntArray) -> dict[str, np.ndarray]:
        """Model inputs for (user, item) pairs given as table rows."""
        categorical = np.concatenate(
            [self.user_categorical[user_rows], self.item_categorical[item_rows]], axis=1
        )
        return {CATEGORICAL_INPUT: categorical, DENSE_INPUT: self.item_dense[item_rows]}

    def save(self, path: Path) -> None:
        with path.open("wb") as f:
            np.savez(
                f,
                user_ids=self.user_ids,
                user_fields=np.array(self.user_fields),
                user_categorical=self.user_categorical,
                item_ids=self.item_ids,
                item_fields=np.array(self.item_fields),
                item_categorical=self.item_categorical,
                dense_fields=np.array(self.dense_fields),
                item_dense=self.item_dense,
            )

    @classmethod
    def load(cls, path: Path) -> FeatureTables:
        with np.load(path, allow_pickle=False) as data:
            return cls(
                user_ids=data["user_ids"],
                user_fields=_names(data["user_fields"]),
                user_categorical=data["user_categorical"].astype(np.int64, copy=False),
                item_ids=data["item_ids"],
                item_fields=_names(data["item_fields"]),
                item_categorical=data["item_categorical"].astype(np.int64, copy=False),
                dense_fields=_names(data["dense_fields"]),
                item_dense=data["item_dense"].astype(np.float32, copy=False),
            )


def _rows(index: dict[str, int], ids: Iterable[object]) -> IntArray:
    # map() over dict.get keeps the per-id loop in C: this is on every /v1/rank request.
    keys = map(str, ids)
    return np.fromiter(map(index.get, keys, repeat(OOV_ROW)), dtype=np.int64)


def _names(array: npt.NDArray[np.str_]) -> tuple[str, ...]:
    return tuple(str(x) for x in array)

"""Feature rows in an online store (Redis): the key layout and the row codec, shared by the server,
which reads them at request time, and `python -m models publish-features`, which writes a built
version's tables there (numpy only).

Keys, for a model named M under the prefix P (`[features] key_prefix`, default "recsys"):

    P:M:user:<user id>   the user's row: its categorical indices, int64 little-endian
    P:M:item:<item id>   the item's row: its categorical indices, int64 little-endian, then its
                         dense values, float32 little-endian
    P:M:seen:<user id>   a set of the item ids the user has seen (SADD to add one)

A row is raw bytes rather than a hash of fields or JSON: one GET (or one MGET for every candidate)
returns it ready for `numpy.frombuffer`, with nothing to parse per field, and a writer in any
language packs it with one call (`struct.pack("<7q", ...)`, `array.tobytes()`). Its length says
whether it fits the model's fields: a row of another length, or an index outside a field's
vocabulary, is malformed, and that entity is scored through the out-of-vocabulary row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.artifacts.feature_tables import FeatureTables

INDEX = np.dtype("<i8")
VALUE = np.dtype("<f4")


class MalformedRow(ValueError):
    """A stored row that does not fit the model's fields: names the key and why."""


@dataclass(frozen=True)
class KeyLayout:
    prefix: str
    model: str

    def user(self, user_id: str) -> str:
        return f"{self.prefix}:{self.model}:user:{user_id}"

    def item(self, item_id: str) -> str:
        return f"{self.prefix}:{self.model}:item:{item_id}"

    def seen(self, user_id: str) -> str:
        return f"{self.prefix}:{self.model}:seen:{user_id}"


@dataclass(frozen=True)
class RowCodec:
    """The byte layout of a model's user and item rows, and the bounds their indices must meet."""

    user_vocabularies: tuple[int, ...]  # one size per user categorical field (indices < size)
    item_vocabularies: tuple[int, ...]
    dense_width: int

    @classmethod
    def for_tables(cls, tables: FeatureTables, vocabularies: tuple[int, ...]) -> RowCodec:
        """The rows of `tables`' fields; `vocabularies`: one size per categorical field, the
        user's fields first."""
        users = len(tables.user_fields)
        return cls(vocabularies[:users], vocabularies[users:], len(tables.dense_fields))

    @property
    def item_bytes(self) -> int:
        return INDEX.itemsize * len(self.item_vocabularies) + VALUE.itemsize * self.dense_width

    def encode_user(self, categorical: np.ndarray) -> bytes:
        return np.ascontiguousarray(categorical, dtype=INDEX).tobytes()

    def encode_item(self, categorical: np.ndarray, dense: np.ndarray) -> bytes:
        return (
            np.ascontiguousarray(categorical, dtype=INDEX).tobytes()
            + np.ascontiguousarray(dense, dtype=VALUE).tobytes()
        )

    def decode_user(self, key: str, raw: bytes) -> np.ndarray:
        """The user's categorical row (int64), or MalformedRow."""
        width = len(self.user_vocabularies)
        if len(raw) != INDEX.itemsize * width:
            raise MalformedRow(f"{key}: {len(raw)} bytes, a user row is {INDEX.itemsize * width}")
        row = np.frombuffer(raw, dtype=INDEX).astype(np.int64)
        check_indices(key, row, self.user_vocabularies)
        return row

    def decode_items(self, keys: list[str], raws: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Item rows, all of them well formed: (categorical int64 [n, fields], dense float32
        [n, width]); MalformedRow for the first that is not (decode it alone to find which)."""
        fields = len(self.item_vocabularies)
        expected = self.item_bytes
        for key, raw in zip(keys, raws, strict=True):
            if len(raw) != expected:
                raise MalformedRow(f"{key}: {len(raw)} bytes, an item row is {expected}")
        if not raws:
            return (np.empty((0, fields), np.int64), np.empty((0, self.dense_width), np.float32))
        block = np.frombuffer(b"".join(raws), dtype=np.uint8).reshape(len(raws), expected)
        split = INDEX.itemsize * fields
        categorical = block[:, :split].copy().view(INDEX).astype(np.int64)
        dense = block[:, split:].copy().view(VALUE).astype(np.float32)
        # Checked as a whole (a loop over rows would cost more than the model); the first bad
        # row is named.
        bad = ((categorical < 0) | (categorical >= np.asarray(self.item_vocabularies))).any(axis=1)
        bad |= ~np.isfinite(dense).all(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            check_indices(keys[i], categorical[i], self.item_vocabularies)
            raise MalformedRow(f"{keys[i]}: a dense value is not finite")
        return categorical, dense


def check_indices(key: str, row: np.ndarray, vocabularies: tuple[int, ...]) -> None:
    bad = np.flatnonzero((row < 0) | (row >= np.asarray(vocabularies)))
    if len(bad):
        i = int(bad[0])
        raise MalformedRow(
            f"{key}: field {i} has index {int(row[i])}, outside its vocabulary of {vocabularies[i]}"
        )

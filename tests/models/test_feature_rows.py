"""The online store's row codec: what publish-features writes the server reads back; a row of
another length, an index outside its vocabulary or a non-finite value is malformed, named."""

from __future__ import annotations

import numpy as np
import pytest

from models.artifacts.feature_rows import KeyLayout, MalformedRow, RowCodec

CODEC = RowCodec(user_vocabularies=(10, 3), item_vocabularies=(5, 4, 2), dense_width=2)


def test_rows_round_trip() -> None:
    user = CODEC.decode_user("u", CODEC.encode_user(np.array([9, 2])))
    assert user.dtype == np.int64 and user.tolist() == [9, 2]
    raws = [CODEC.encode_item(np.array([4, 3, 1]), np.array([0.5, -1.0])),
            CODEC.encode_item(np.array([0, 0, 0]), np.array([0.0, 2.0]))]  # fmt: skip
    categorical, dense = CODEC.decode_items(["a", "b"], raws)
    assert categorical.tolist() == [[4, 3, 1], [0, 0, 0]]
    assert dense.dtype == np.float32 and dense.tolist() == [[0.5, -1.0], [0.0, 2.0]]
    assert CODEC.item_bytes == len(raws[0]) == 3 * 8 + 2 * 4


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"xx", "k: 2 bytes, a user row is 16"),
        (
            np.array([10, 0], "<i8").tobytes(),
            "k: field 0 has index 10, outside its vocabulary of 10",
        ),
        (np.array([1, -1], "<i8").tobytes(), "k: field 1 has index -1"),
    ],
)
def test_a_malformed_user_row_names_its_key(raw: bytes, message: str) -> None:
    with pytest.raises(MalformedRow, match=message):
        CODEC.decode_user("k", raw)


def test_a_malformed_item_row_names_its_key() -> None:
    good = CODEC.encode_item(np.array([1, 1, 1]), np.array([0.0, 0.0]))
    with pytest.raises(MalformedRow, match="b: 3 bytes"):
        CODEC.decode_items(["a", "b"], [good, b"abc"])
    nan = CODEC.encode_item(np.array([1, 1, 1]), np.array([np.nan, 0.0]))
    with pytest.raises(MalformedRow, match="c: a dense value is not finite"):
        CODEC.decode_items(["c"], [nan])
    big = CODEC.encode_item(np.array([1, 1, 2]), np.array([0.0, 0.0]))
    with pytest.raises(MalformedRow, match="d: field 2 has index 2"):
        CODEC.decode_items(["d"], [big])


def test_the_key_layout() -> None:
    keys = KeyLayout("recsys", "m")
    assert (keys.user("7"), keys.item("x"), keys.seen("7")) == (
        "recsys:m:user:7", "recsys:m:item:x", "recsys:m:seen:7",
    )  # fmt: skip

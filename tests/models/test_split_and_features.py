from __future__ import annotations

import numpy as np

from models import features
from models.artifacts.feature_tables import OOV_ROW
from models.split import random_split


def test_split_is_8_1_1_disjoint_and_deterministic() -> None:
    a = random_split(100_000, 0.1, 0.1, seed=2025)
    b = random_split(100_000, 0.1, 0.1, seed=2025)
    c = random_split(100_000, 0.1, 0.1, seed=7)
    assert a.sizes == {"train": 80_000, "validation": 10_000, "test": 10_000}
    for name in ("train", "validation", "test"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.test, c.test)
    everything = np.concatenate([a.train, a.validation, a.test])
    assert np.array_equal(np.sort(everything), np.arange(100_000))


def test_vocabulary_maps_unknown_tokens_to_the_oov_slot() -> None:
    vocabulary = features.Vocabulary(["b", "a", "a"])
    assert len(vocabulary) == 3
    assert vocabulary.encode("a") == 1 and vocabulary.encode("b") == 2
    assert vocabulary.encode("never seen") == 0


def test_unknown_ids_map_to_the_oov_row(encoded: features.EncodedDataset) -> None:
    tables = encoded.tables
    assert list(tables.user_rows(["1", "no-such-user"])) == [1, OOV_ROW]
    assert list(tables.item_rows(["99999"])) == [OOV_ROW]
    inputs = tables.assemble(tables.user_rows(["no-such-user"]), tables.item_rows(["99999"]))
    assert inputs["categorical"].tolist() == [[0] * 7]
    assert inputs["dense"].tolist() == [[0.0] * 19]


def test_id_vocabularies_come_from_training_rows_only(encoded: features.EncodedDataset) -> None:
    train_items = set(encoded.item_rows[encoded.split.train])
    item_id_column = encoded.tables.item_categorical[:, 0]
    unseen = [row for row in range(1, len(item_id_column)) if row not in train_items]
    assert unseen, "some items have no training rating on this split"
    assert all(item_id_column[row] == 0 for row in unseen)
    assert all(item_id_column[row] > 0 for row in train_items)


def test_inputs_have_the_declared_shapes(encoded: features.EncodedDataset) -> None:
    inputs = encoded.inputs(encoded.split.test[:5])
    assert inputs["categorical"].shape == (5, 7) and inputs["categorical"].dtype == np.int64
    assert inputs["dense"].shape == (5, 19) and inputs["dense"].dtype == np.float32
    genre_sums = inputs["dense"].sum(axis=1)
    assert np.allclose(genre_sums[genre_sums > 0], 1.0)
    sizes = np.array(list(encoded.vocabulary_sizes.values()))
    assert (encoded.tables.user_categorical.max(axis=0) < sizes[:5]).all()


def test_buckets() -> None:
    assert features.age_bucket(7) == "0" and features.age_bucket(18) == "1"
    assert features.age_bucket(60) == "6"
    assert features.year_bucket(1997) == "1995" and features.year_bucket(None) == ""

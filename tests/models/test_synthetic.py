from __future__ import annotations

import numpy as np
import pytest

from models import synthetic
from models.metrics import roc_auc


def test_deterministic_from_seed_with_criteo_shape() -> None:
    a = synthetic.generate(5_000, seed=3)
    b = synthetic.generate(5_000, seed=3)
    c = synthetic.generate(5_000, seed=4)
    assert a.categorical.shape == (5_000, 26) and a.dense.shape == (5_000, 13)
    assert np.array_equal(a.categorical, b.categorical) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.categorical, c.categorical)
    cardinalities = np.array(a.cardinalities)
    assert (a.categorical >= 1).all() and (a.categorical <= cardinalities).all()
    assert np.isfinite(a.dense).all() and (a.dense >= 0).all()


def test_ids_are_zipf_skewed_and_labels_follow_the_planted_model() -> None:
    data = synthetic.generate(50_000, seed=0)
    column = data.categorical[:, 2]  # 100,000 ids
    counts = np.sort(np.bincount(column))[::-1]
    assert counts[:100].sum() / len(column) > 0.3  # the head of a Zipf law carries most rows
    assert 0.1 < data.labels.mean() < 0.5
    assert roc_auc(data.labels, data.planted_logits) > 0.75


def test_tables_up_to_a_million_rows() -> None:
    cardinalities = (1_000_000,) * 2 + (10,) * 24
    data = synthetic.generate(1_000, seed=1, cardinalities=cardinalities)
    assert data.vocabulary_sizes[0] == 1_000_001
    assert data.categorical[:, 0].max() <= 1_000_000


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="26 entries"):
        synthetic.generate(10, seed=0, cardinalities=(10,))
    with pytest.raises(ValueError, match="cardinality"):
        synthetic.generate(10, seed=0, cardinalities=(2_000_000,) * 26)

"""A synthetic Criteo-shaped data set for scale work, deterministic from a seed.

26 categorical fields with Zipf-distributed ids (index 0 stays the OOV slot, ids are
1..cardinality), 13 dense fields shaped like Criteo's counts (log1p of a heavy-tailed count), and
labels drawn from a planted model: a per-id weight for every field, a few pairwise field
interactions and a linear dense term. The planted logit is known, so its AUC is the ceiling a
learned model can approach.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.ctr_table import write_table

CATEGORICAL_FIELDS = 26
DENSE_FIELDS = 13
MAX_CARDINALITY = 1_000_000
# Criteo-like spread: a few huge tables, many small ones.
DEFAULT_CARDINALITIES = (
    1_000, 500, 100_000, 50_000, 300, 30, 10_000, 600, 5, 40_000, 5_000, 100_000, 3_000,
    30, 10_000, 80_000, 10, 4_000, 2_000, 4, 90_000, 20, 15, 30_000, 100, 25_000,
)  # fmt: skip
INTERACTING_PAIRS = ((0, 2), (1, 3), (6, 9), (11, 15), (20, 23))


@dataclass(frozen=True)
class SyntheticCriteo:
    categorical: npt.NDArray[np.int64]  # [rows, 26], values in 1..cardinality
    dense: npt.NDArray[np.float32]  # [rows, 13]
    labels: npt.NDArray[np.float32]
    planted_logits: npt.NDArray[np.float64]
    cardinalities: tuple[int, ...]

    @property
    def vocabulary_sizes(self) -> tuple[int, ...]:
        return tuple(c + 1 for c in self.cardinalities)


def zipf_ids(rng: np.random.Generator, rows: int, cardinality: int, exponent: float) -> np.ndarray:
    """Ids 1..cardinality with P(rank k) proportional to k^-exponent, ranks shuffled onto ids."""
    ranks = np.arange(1, cardinality + 1, dtype=np.float64)
    cdf = np.cumsum(ranks**-exponent)
    cdf /= cdf[-1]
    drawn = np.minimum(np.searchsorted(cdf, rng.random(rows)), cardinality - 1)
    return rng.permutation(cardinality)[drawn] + 1


def generate(
    rows: int,
    seed: int,
    cardinalities: tuple[int, ...] = DEFAULT_CARDINALITIES,
    zipf_exponent: float = 1.1,
    base_rate_logit: float = -1.3,
) -> SyntheticCriteo:
    if len(cardinalities) != CATEGORICAL_FIELDS:
        raise ValueError(f"cardinalities must have {CATEGORICAL_FIELDS} entries")
    if not all(1 <= c <= MAX_CARDINALITY for c in cardinalities):
        raise ValueError(f"each cardinality must be in 1..{MAX_CARDINALITY}")
    if rows < 1:
        raise ValueError("rows must be positive")
    rng = np.random.default_rng(seed)
    categorical = np.empty((rows, CATEGORICAL_FIELDS), dtype=np.int64)
    logits = np.full(rows, base_rate_logit, dtype=np.float64)
    for f, cardinality in enumerate(cardinalities):
        categorical[:, f] = zipf_ids(rng, rows, cardinality, zipf_exponent)
        weights = rng.normal(0.0, 0.5, cardinality + 1)
        logits += weights[categorical[:, f]]
    for a, b in INTERACTING_PAIRS:
        # A hashed id-pair weight: the signal a cross layer is there to find.
        buckets = 1 << 12
        pair = (categorical[:, a] * 1_000_003 + categorical[:, b]) % buckets
        logits += rng.normal(0.0, 0.6, buckets)[pair]
    counts = rng.lognormal(mean=1.0, sigma=1.5, size=(rows, DENSE_FIELDS))
    dense = np.log1p(np.floor(counts)).astype(np.float32)
    dense_weights = rng.normal(0.0, 0.3, DENSE_FIELDS)
    logits += (dense - dense.mean(axis=0)) @ dense_weights
    labels = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    return SyntheticCriteo(categorical, dense, labels, logits, tuple(cardinalities))


def write_criteo_file(path: Path, data: SyntheticCriteo, missing_fraction: float = 0.02,
                      seed: int = 0) -> None:  # fmt: skip
    """The rows in Criteo's tab-separated layout (`models/ctr_table.py`): integer counts, ids as
    8-digit hex tokens (a fixed bijection per field), and `missing_fraction` of the fields empty."""
    rng = np.random.default_rng(seed)
    counts = np.rint(np.expm1(data.dense.astype(np.float64))).astype(np.int64).astype(str)
    counts[rng.random(counts.shape) < missing_fraction] = ""
    field = np.arange(CATEGORICAL_FIELDS, dtype=np.uint64)
    mixed = data.categorical.astype(np.uint64) * np.uint64(2654435761) + field * np.uint64(97)
    tokens = np.char.mod("%08x", mixed % np.uint64(1 << 32)).astype(object)
    tokens[rng.random(tokens.shape) < missing_fraction] = ""
    write_table(path, data.labels, counts, tokens)

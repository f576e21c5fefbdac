"""The evaluation protocol's split: random 8:1:1 by interaction with a fixed seed.

A random split by interaction (not by time or by user) is the protocol of RecBole's published
MovieLens-100K CTR figures, so results compare with them: every user and nearly every item is seen
in training, and the task is to rank a user's held-out ratings. Early stopping reads validation;
test is scored once per model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Rows = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Split:
    train: Rows
    validation: Rows
    test: Rows
    seed: int

    @property
    def sizes(self) -> dict[str, int]:
        return {
            "train": len(self.train),
            "validation": len(self.validation),
            "test": len(self.test),
        }


def random_split(rows: int, validation_fraction: float, test_fraction: float, seed: int) -> Split:
    order = np.random.default_rng(seed).permutation(rows).astype(np.int64)
    n_test = round(rows * test_fraction)
    n_validation = round(rows * validation_fraction)
    return Split(
        train=np.sort(order[n_test + n_validation :]),
        validation=np.sort(order[n_test : n_test + n_validation]),
        test=np.sort(order[:n_test]),
        seed=seed,
    )

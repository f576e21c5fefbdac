"""Comparing a shadow candidate's scores of one request with the scores sent (`compare`, pure),
and one output's agreement over the requests compared so far (`Tally`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Agreement:
    """One request's output as the candidate scored it, against the one sent."""

    spearman: float  # rank correlation of the rows within the request
    top_k_overlap: float  # |top k sent & top k candidate| / k, k capped at the rows
    max_abs_difference: float
    distinct: int  # distinct values, the candidate's
    distinct_sent: int


def compare(sent: np.ndarray, candidate: np.ndarray, k: int) -> Agreement:
    """Pure. One row, or rows all equal in both: a perfect rank correlation (nothing to order).
    Runs per sampled request on the serving thread: one sort of each side does all of it."""
    a = np.asarray(sent, dtype=np.float64).ravel()
    b = np.asarray(candidate, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: sent {a.shape}, candidate {b.shape}")
    (ranks_a, order_a, distinct_a), (ranks_b, order_b, distinct_b) = ranked(a), ranked(b)
    if len(a) < 2 or (distinct_a == 1 and distinct_b == 1):
        rho = 1.0
    elif distinct_a == 1 or distinct_b == 1:
        rho = 0.0  # one ranks the rows, the other ties them all
    else:
        rho = rank_correlation(ranks_a, ranks_b) or 0.0  # neither is constant here
    top = min(k, len(a))
    overlap = len(np.intersect1d(order_a[len(a) - top :], order_b[len(b) - top :]))
    difference = float(np.max(np.abs(a - b))) if len(a) else 0.0
    return Agreement(rho, overlap / top if top else 1.0, difference, distinct_b, distinct_a)


def rank_correlation(ranks_a: np.ndarray, ranks_b: np.ndarray) -> float | None:
    """Spearman's rho: Pearson's r of two rank vectors; None when either is constant."""
    da, db = ranks_a - ranks_a.mean(), ranks_b - ranks_b.mean()
    scale = np.sqrt(np.dot(da, da) * np.dot(db, db))
    return float(np.dot(da, db) / scale) if scale else None


def ranked(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """1-based average ranks (a run of equal values shares the mean of its ranks), the rows in
    ascending order (stable: of equal values, the later row ranks higher in the top k), and the
    number of distinct values."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    new = np.empty(len(values), dtype=bool)
    new[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(values))
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks, order, len(starts)


@dataclass
class Tally:
    """One output's agreement over the requests compared so far."""

    requests: int = 0
    spearman_sum: float = 0.0
    spearman_min: float = math.inf
    overlap_sum: float = 0.0
    overlap_min: float = math.inf
    max_abs_difference: float = 0.0
    distinct: int = 0
    distinct_sent: int = 0

    def add(self, agreement: Agreement) -> None:
        self.requests += 1
        self.spearman_sum += agreement.spearman
        self.spearman_min = min(self.spearman_min, agreement.spearman)
        self.overlap_sum += agreement.top_k_overlap
        self.overlap_min = min(self.overlap_min, agreement.top_k_overlap)
        self.max_abs_difference = max(self.max_abs_difference, agreement.max_abs_difference)
        self.distinct += agreement.distinct
        self.distinct_sent += agreement.distinct_sent

    def document(self) -> dict[str, Any]:
        n = max(self.requests, 1)
        return {
            "requests": self.requests,
            "spearman": {"mean": self.spearman_sum / n, "min": _finite(self.spearman_min)},
            "top_k_overlap": {"mean": self.overlap_sum / n, "min": _finite(self.overlap_min)},
            "max_abs_difference": self.max_abs_difference,
            "distinct_ratio": self.distinct / self.distinct_sent if self.distinct_sent else None,
        }


def _finite(value: float) -> float | None:
    return None if math.isinf(value) else value

"""The gate a shadow candidate's live agreement is held to: `python -m models accelerate`'s
no-label gate ([gate] numerics_min_spearman, numerics_max_distinct_change), over the pooled rows
of at least `[shadow] min_requests` compared requests (the most recent `pool_rows` of them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from app.dataplane.shadow_compare import rank_correlation, ranked


@dataclass(frozen=True)
class Gate:
    min_requests: int
    min_spearman: float
    max_distinct_change: float


@dataclass(frozen=True)
class Verdict:
    state: Literal["pending", "passes", "fails"]
    reason: str  # one line: the figures, or the first rule broken
    requests: int  # compared when it was reached
    rows: int  # pooled rows it was reached on


class RecentRows:
    """The most recent `capacity` rows of one output, as sent and as the candidate scored them."""

    def __init__(self, capacity: int) -> None:
        self.sent = np.empty(capacity, dtype=np.float64)
        self.candidate = np.empty(capacity, dtype=np.float64)
        self.size = 0
        self._next = 0

    def add(self, sent: np.ndarray, candidate: np.ndarray) -> None:
        capacity = len(self.sent)
        a, b = np.ravel(sent)[-capacity:], np.ravel(candidate)[-capacity:]
        at = self._next
        first = min(len(a), capacity - at)  # up to the end, then from the start
        self.sent[at : at + first], self.candidate[at : at + first] = a[:first], b[:first]
        rest = len(a) - first
        self.sent[:rest], self.candidate[:rest] = a[first:], b[first:]
        self._next = (self._next + len(a)) % capacity
        self.size = min(capacity, self.size + len(a))

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        return self.sent[: self.size], self.candidate[: self.size]


def judge(sent: np.ndarray, candidate: np.ndarray, requests: int, gate: Gate) -> Verdict:
    """Pure. Pending below `min_requests`; else Spearman over the pooled rows and the change in
    their distinct scores, as `models accelerate` judges held-out rows without labels."""
    if requests < gate.min_requests:
        return Verdict("pending", f"{requests} of {gate.min_requests} requests compared",
                       requests, len(sent))  # fmt: skip
    (ranks_a, _, distinct_a), (ranks_b, _, distinct_b) = ranked(sent), ranked(candidate)
    rho = rank_correlation(ranks_a, ranks_b)
    if rho is None:  # a constant side: agreement only if both are
        rho = float(distinct_a == distinct_b)
    change = abs(distinct_b - distinct_a) / max(distinct_a, 1)
    figures = (f"Spearman {rho:.5f} over {len(sent):,} rows of {requests:,} requests, "
               f"{distinct_b:,} distinct scores vs {distinct_a:,}")  # fmt: skip
    if rho < gate.min_spearman:
        return Verdict("fails", f"Spearman {rho:.5f} < {gate.min_spearman} ({figures})",
                       requests, len(sent))  # fmt: skip
    if change > gate.max_distinct_change:
        return Verdict("fails", f"scores collapse: {distinct_b:,} distinct vs {distinct_a:,}",
                       requests, len(sent))  # fmt: skip
    return Verdict("passes", figures, requests, len(sent))

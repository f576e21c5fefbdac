"""The accuracy gate (numpy only): a variant that loses accuracy is not served.

Numerics-only variants (INT8, FP16, BF16 execution of the same weights) are compared row by row
with the float model they come from; retrained or structural variants (the student, pruning) with
the baseline over seeds, plus a paired bootstrap interval of the AUC difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from models.metrics import average_ranks, log_loss, roc_auc
from models.settings import GateSettings

Scores = npt.NDArray[np.floating[Any]]


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str  # one line: what passed, or the first rule broken


def spearman(a: Scores, b: Scores) -> float:
    return float(np.corrcoef(average_ranks(a), average_ranks(b))[0, 1])


def numerics_gate(
    labels: Scores, reference: Scores, candidate: Scores, settings: GateSettings
) -> Verdict:
    auc_drop = roc_auc(labels, reference) - roc_auc(labels, candidate)
    loss_ratio = log_loss(labels, candidate) / log_loss(labels, reference)
    rho = spearman(reference, candidate)
    distinct_ref, distinct = len(np.unique(reference)), len(np.unique(candidate))
    distinct_change = abs(distinct - distinct_ref) / distinct_ref
    figures = (
        f"AUC {-auc_drop:+.4f}, log loss x{loss_ratio:.4f}, Spearman {rho:.5f}, "
        f"{distinct:,} distinct scores vs {distinct_ref:,}"
    )
    if auc_drop > settings.numerics_max_auc_drop:
        return Verdict(False, f"AUC drops {auc_drop:.4f} > {settings.numerics_max_auc_drop}")
    if loss_ratio > settings.numerics_max_log_loss_ratio:
        return Verdict(
            False, f"log loss x{loss_ratio:.4f} > x{settings.numerics_max_log_loss_ratio}"
        )
    if rho < settings.numerics_min_spearman:
        return Verdict(False, f"Spearman {rho:.5f} < {settings.numerics_min_spearman}")
    if distinct_change > settings.numerics_max_distinct_change:
        return Verdict(False, f"scores collapse: {distinct:,} distinct vs {distinct_ref:,}")
    return Verdict(True, "passes: " + figures)


@dataclass(frozen=True)
class BootstrapInterval:
    mean: float
    low: float
    high: float


def paired_bootstrap_auc_difference(
    labels: Scores, baseline: Scores, candidate: Scores, rounds: int, seed: int
) -> BootstrapInterval:
    """95% interval of AUC(candidate) - AUC(baseline) over test rows resampled with replacement."""
    rng = np.random.default_rng(seed)
    differences = []
    for _ in range(rounds):
        rows = rng.integers(0, len(labels), len(labels))
        differences.append(
            roc_auc(labels[rows], candidate[rows]) - roc_auc(labels[rows], baseline[rows])
        )
    low, high = np.percentile(differences, [2.5, 97.5])
    return BootstrapInterval(float(np.mean(differences)), float(low), float(high))


def structural_gate(
    baseline_aucs: list[float], candidate_aucs: list[float], settings: GateSettings
) -> Verdict:
    drop = float(np.mean(baseline_aucs) - np.mean(candidate_aucs))
    figures = (
        f"mean AUC {np.mean(candidate_aucs):.4f} over {len(candidate_aucs)} seeds vs "
        f"{np.mean(baseline_aucs):.4f}"
    )
    if drop > settings.structural_max_auc_drop:
        return Verdict(False, f"{figures}: drops {drop:.4f} > {settings.structural_max_auc_drop}")
    return Verdict(True, "passes: " + figures)

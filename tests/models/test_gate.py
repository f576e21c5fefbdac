from __future__ import annotations

import numpy as np

from models.gate import (
    numerics_gate,
    paired_bootstrap_auc_difference,
    spearman,
    structural_gate,
)
from models.metrics import roc_auc
from models.settings import GateSettings

GATE = GateSettings()


def scored_rows(rows: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, rows).astype(np.float32)
    logits = rng.normal(size=rows) + labels
    return labels, 1 / (1 + np.exp(-logits))


def test_identical_and_tiny_noise_pass() -> None:
    labels, scores = scored_rows()
    assert numerics_gate(labels, scores, scores, GATE).passed
    noisy = scores + np.random.default_rng(1).normal(0, 1e-5, len(scores))
    verdict = numerics_gate(labels, scores, noisy, GATE)
    assert verdict.passed and verdict.reason.startswith("passes")


def test_quantized_output_collapses_scores_and_fails() -> None:
    labels, scores = scored_rows()
    collapsed = np.round(scores * 255) / 255  # an 8-bit probability
    verdict = numerics_gate(labels, scores, collapsed, GATE)
    assert not verdict.passed
    assert "collapse" in verdict.reason or "Spearman" in verdict.reason


def test_rank_damage_fails_on_spearman_or_auc() -> None:
    labels, scores = scored_rows()
    damaged = scores + np.random.default_rng(2).normal(0, 0.05, len(scores))
    assert spearman(scores, damaged) < 0.999
    assert not numerics_gate(labels, scores, damaged, GATE).passed


def test_structural_gate_uses_seed_means() -> None:
    assert structural_gate([0.796, 0.795], [0.795, 0.794], GATE).passed
    verdict = structural_gate([0.796, 0.795], [0.790, 0.792], GATE)
    assert not verdict.passed and "drops 0.0045" in verdict.reason


def test_bootstrap_interval_covers_the_observed_difference() -> None:
    labels, scores = scored_rows(2000)
    worse = scores + np.random.default_rng(3).normal(0, 0.2, len(scores))
    interval = paired_bootstrap_auc_difference(labels, scores, worse, rounds=200, seed=0)
    observed = roc_auc(labels, worse) - roc_auc(labels, scores)
    assert interval.low < observed < interval.high
    assert interval.high < 0  # clearly worse

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from config.settings import load_settings
from models import features
from models.architectures import DCNv2, parameter_count
from models.build import examples, new_baseline, popularity_scores
from models.export import check_parity, export_onnx
from models.graph_statistics import graph_statistics
from models.metrics import roc_auc
from models.runtime import OnnxRuntimeSession, OpenVinoSession
from models.train import evaluate, fit


def shape(encoded: features.EncodedDataset) -> tuple[list[int], int]:
    return list(encoded.vocabulary_sizes.values()), len(encoded.tables.dense_fields)


@pytest.fixture(scope="module")
def trained(encoded: features.EncodedDataset) -> DCNv2:
    settings = load_settings()
    model = new_baseline(settings, *shape(encoded), seed=0)
    train = examples(encoded, encoded.split.train)
    validation = examples(encoded, encoded.split.validation)
    result = fit(model, train, validation, settings.training, seed=0, max_epochs=2)
    assert result.epochs_run == 2 and len(result.validation_history) == 2
    return model


def test_heavy_baseline_has_the_required_shape(encoded: features.EncodedDataset) -> None:
    model = new_baseline(load_settings(), *shape(encoded), seed=0)
    widths = [m.out_features for m in model.mlp if isinstance(m, torch.nn.Linear)]
    assert len(widths) >= 3 and widths[0] >= 1024
    assert model.embedding.embedding_dim >= 32
    assert len(model.cross) >= 1
    assert parameter_count(model) > 1_000_000


def test_short_training_beats_item_popularity(
    trained: DCNv2, encoded: features.EncodedDataset
) -> None:
    test = examples(encoded, encoded.split.test)
    popularity_auc = roc_auc(test.labels, popularity_scores(encoded))
    auc, loss = evaluate(trained, test)
    assert popularity_auc > 0.65  # the reference itself is sane
    assert auc > popularity_auc + 0.03
    assert auc > 0.77
    assert loss < 0.6


def test_export_parity_and_dynamic_batch(
    trained: DCNv2, encoded: features.EncodedDataset, tmp_path: Path
) -> None:
    path = tmp_path / "model.onnx"
    export_onnx(trained, path, categorical_fields=7, dense_fields=19)
    parity = check_parity(trained, path, examples(encoded, encoded.split.test[:1000]))
    fp32 = [p for p in parity if p.requested_precision == "f32"]
    assert {p.runtime for p in fp32} == {"onnxruntime", "openvino"}
    for p in fp32:
        assert p.rows == 1000 and p.execution_precision == "f32"
        assert p.max_abs_difference <= 1e-5, p
    stats = graph_statistics(path)
    assert stats.parameters == parameter_count(trained)
    # Cross layers (3 x 256 x 256) and MLP (256x1024, 1024x512, 512x256) and the head dominate.
    assert stats.flops_per_row > 2 * (3 * 256 * 256 + 256 * 1024 + 1024 * 512 + 512 * 256)

    rows = encoded.split.test[:4096]
    inputs = encoded.inputs(rows)
    for session in (OnnxRuntimeSession(path), OpenVinoSession(path, "f32")):
        for batch in (1, 7, 4096):
            out = session.run({k: v[:batch] for k, v in inputs.items()})
            assert out.shape == (batch,) and out.dtype == np.float32

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch

from models.architectures import DCNv2, parameter_count
from models.export import export_onnx
from models.prune import PruningStep, importances, shrink

SIZES = [50, 8, 3, 20, 40, 60, 9]


def model_and_rows() -> tuple[DCNv2, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = DCNv2(SIZES, 19, embedding_dim=16, cross_layers=2, mlp_units=(32, 16), dropout=0.0)
    for parameter in model.parameters():  # spread the weights so every unit matters
        torch.nn.init.normal_(parameter, std=0.3)
    rng = np.random.default_rng(0)
    categorical = np.stack([rng.integers(0, s, 512) for s in SIZES], axis=1)
    dense = rng.random((512, 19)).astype(np.float32)
    return model.eval(), torch.from_numpy(categorical), torch.from_numpy(dense)


def test_keeping_everything_changes_nothing() -> None:
    model, categorical, dense = model_and_rows()
    same = shrink(model, PruningStep(16, (32, 16)), categorical, dense).eval()
    with torch.no_grad():
        assert torch.allclose(model(categorical, dense), same(categorical, dense), atol=1e-6)


def test_pruning_removes_the_least_important_units_physically(tmp_path: Path) -> None:
    model, categorical, dense = model_and_rows()
    dims, neurons = importances(model, categorical, dense)
    assert dims.shape == (16,) and [n.shape[0] for n in neurons] == [32, 16]

    pruned = shrink(model, PruningStep(8, (12, 6)), categorical, dense).eval()
    assert pruned.embedding.weight.shape == (sum(SIZES), 8)
    assert parameter_count(pruned) < parameter_count(model) / 2

    export_onnx(model, tmp_path / "full.onnx", 7, 19)
    export_onnx(pruned, tmp_path / "pruned.onnx", 7, 19)

    def shapes(path: Path) -> dict[str, tuple[int, ...]]:
        graph = onnx.load(str(path)).graph
        return {i.name: tuple(i.dims) for i in graph.initializer if len(i.dims) == 2}

    full, small = shapes(tmp_path / "full.onnx"), shapes(tmp_path / "pruned.onnx")
    width = 8 * 8  # (7 fields + the dense projection) x 8 kept dimensions
    assert full["cross.0.weight"] == (128, 128) and small["cross.0.weight"] == (width, width)
    assert small["mlp.0.weight"] == (12, width) and small["mlp.3.weight"] == (6, 12)
    assert small["embedding.weight"] == (sum(SIZES), 8)
    assert small["head.weight"] == (1, width + 6)


def test_pruned_model_keeps_most_of_the_signal() -> None:
    model, categorical, dense = model_and_rows()
    pruned = shrink(model, PruningStep(12, (24, 12)), categorical, dense).eval()
    with torch.no_grad():
        full = model.logits_and_embeddings(categorical, dense)[0]
        small = pruned.logits_and_embeddings(categorical, dense)[0]
    # The pruned logits still follow the original before any fine-tuning.
    assert np.corrcoef(full.numpy(), small.numpy())[0, 1] > 0.5

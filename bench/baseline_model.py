"""The heavy baseline back in PyTorch, rebuilt from the weights in its published ONNX file.

The repository publishes ONNX, not checkpoints; the exporter keeps the module's parameter names
(`cross.0.weight`, `mlp.3.bias`, ...), so the architecture can be read off the tensor shapes and the
state dict loaded strictly. Parity with ONNX Runtime is checked before the model is used.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from models.architectures import DCNv2
from models.artifacts.repository import ModelVersion

BASELINE_VARIANT = "baseline-fp32"


def load_baseline(version: ModelVersion) -> DCNv2:
    path = version.variant_path(BASELINE_VARIANT)
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    manifest = version.manifest
    sizes = [manifest.vocabulary_sizes[f] for f in manifest.categorical_fields]
    cross = sorted({int(k.split(".")[1]) for k in weights if k.startswith("cross.")})
    mlp = sorted({int(k.split(".")[1]) for k in weights if k.startswith("mlp.")})
    model = DCNv2(
        sizes,
        dense_dim=weights["dense_projection.weight"].shape[1],
        embedding_dim=weights["embedding.weight"].shape[1],
        cross_layers=len(cross),
        mlp_units=[weights[f"mlp.{i}.weight"].shape[0] for i in mlp],
    )
    names = set(model.state_dict())
    state = {k: torch.from_numpy(np.array(v)) for k, v in weights.items() if k in names}
    model.load_state_dict(state, strict=True)
    model.eval()
    check_parity(model, version, str(path))
    return model


def check_parity(model: DCNv2, version: ModelVersion, onnx_path: str, rows: int = 512) -> None:
    split = version.load_test_split()
    inputs = version.tables.assemble(split.user_rows[:rows], split.item_rows[:rows])
    with torch.inference_mode():
        ours = model(*(torch.from_numpy(inputs[k]) for k in ("categorical", "dense"))).numpy()
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    theirs = session.run(None, inputs)[0].reshape(-1)
    error = float(np.abs(ours - theirs).max())
    if error > 1e-5:
        raise RuntimeError(f"baseline rebuilt from {onnx_path} differs from it by {error:.2e}")

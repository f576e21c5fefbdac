"""ONNX export, graph statistics and runtime parity (training side: imports torch and onnx)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.architectures import RankingModel
from models.artifacts.feature_tables import CATEGORICAL_INPUT, DENSE_INPUT
from models.runtime import OnnxRuntimeSession, OpenVinoSession, Session
from models.train import Examples, predict

OPSET = 18
OUTPUT_NAME = "probability"


def export_onnx(
    model: RankingModel, path: Path, categorical_fields: int, dense_fields: int
) -> None:
    """Export with a dynamic batch axis and named inputs and output."""
    model.eval()
    rows = 4  # any size above one, so the exporter does not specialise the batch axis
    example = (
        torch.zeros((rows, categorical_fields), dtype=torch.int64),
        torch.zeros((rows, dense_fields), dtype=torch.float32),
    )
    with warnings.catch_warnings(), _quiet_exporter_logs():
        # The exporter warns about its own internals (deprecated treespec checks, unused axis
        # names); none of it concerns the exported graph, which parity checks verify.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        _export(model, example, path)


def _export(model: RankingModel, example: tuple[torch.Tensor, ...], path: Path) -> None:
    batch = torch.export.Dim("batch")
    torch.onnx.export(
        model,
        example,
        str(path),
        input_names=[CATEGORICAL_INPUT, DENSE_INPUT],
        output_names=[OUTPUT_NAME],
        opset_version=OPSET,
        dynamo=True,
        external_data=False,
        dynamic_shapes={"categorical": {0: batch}, "dense": {0: batch}},
        verbose=False,
    )


@contextlib.contextmanager
def _quiet_exporter_logs() -> Iterator[None]:
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@dataclass(frozen=True)
class ParityResult:
    runtime: str
    requested_precision: str
    execution_precision: str
    rows: int
    max_abs_difference: float


def check_parity(model: RankingModel, path: Path, examples: Examples) -> list[ParityResult]:
    """Probabilities from ONNX Runtime and OpenVINO (FP32, and its default precision) vs PyTorch."""
    reference = predict(model, examples)
    inputs: dict[str, np.ndarray] = {
        CATEGORICAL_INPUT: examples.categorical,
        DENSE_INPUT: examples.dense,
    }
    sessions: list[tuple[str, Session]] = [
        ("f32", OnnxRuntimeSession(path)),
        ("f32", OpenVinoSession(path, inference_precision="f32")),
        ("default", OpenVinoSession(path, inference_precision=None)),
    ]
    results = []
    for requested, session in sessions:
        difference = float(np.abs(session.run(inputs).astype(np.float64) - reference).max())
        results.append(
            ParityResult(
                session.runtime, requested, session.execution_precision, len(reference), difference
            )
        )
    return results

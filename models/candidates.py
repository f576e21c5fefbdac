"""Variant files and their test-split scores: export, quantize, convert, then score each.

A Candidate is one file-based variant with the scores it gives on the test split in the runtime
and precision it would be served with; the gate reads those scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from models.architectures import DCNv2, parameter_count
from models.export import ParityResult, check_parity, export_onnx
from models.graph_statistics import graph_statistics
from models.runtime import OnnxRuntimeSession, Session
from models.train import Examples

Inputs = dict[str, np.ndarray]


@dataclass
class Candidate:
    name: str
    path: Path
    format: Literal["onnx", "openvino-ir"]
    precision: Literal["fp32", "fp16", "bf16", "int8"]
    device: Literal["cpu", "gpu"]
    runtimes: tuple[Literal["onnxruntime", "openvino"], ...]
    parameters: int
    flops_per_row: int
    scores: npt.NDArray[np.float32]
    scored_runtime: Literal["onnxruntime", "openvino"]
    scored_precision: str
    derived_from: str | None = None
    parity: list[ParityResult] = field(default_factory=list)
    servable: bool = False
    gate: str = "not gated"

    @property
    def weights_path(self) -> Path | None:
        return self.path.with_suffix(".bin") if self.format == "openvino-ir" else None


def export_float(
    name: str, model: DCNv2, path: Path, parity_rows: Examples, test_inputs: Inputs
) -> Candidate:
    """Export a float model to ONNX, check parity with PyTorch, score it with ONNX Runtime."""
    export_onnx(model, path, parity_rows.categorical.shape[1], parity_rows.dense.shape[1])
    stats = graph_statistics(path)
    if stats.parameters != parameter_count(model):
        raise RuntimeError(
            f"{path.name}: {stats.parameters} weights, model {parameter_count(model)}"
        )
    session = OnnxRuntimeSession(path)
    return Candidate(
        name=name,
        path=path,
        format="onnx",
        precision="fp32",
        device="cpu",
        runtimes=("onnxruntime", "openvino"),
        parameters=stats.parameters,
        flops_per_row=stats.flops_per_row,
        scores=session.run(test_inputs),
        scored_runtime="onnxruntime",
        scored_precision=session.execution_precision,
        parity=check_parity(model, path, parity_rows),
    )


def derived(
    source: Candidate,
    name: str,
    path: Path,
    precision: Literal["fp32", "fp16", "bf16", "int8"],
    session: Session,
    test_inputs: Inputs,
    device: Literal["cpu", "gpu"] = "cpu",
) -> Candidate:
    """A numerics-only variant of `source`, scored by `session`."""
    is_ir = path.suffix == ".xml"
    executed = session.execution_precision  # OpenVINO's hint: its precision for float layers
    if not is_ir:
        executed = "f32" if precision == "fp32" else precision
    elif precision == "int8":
        executed = f"int8 ({executed} elsewhere)"
    return Candidate(
        name=name,
        path=path,
        format="openvino-ir" if is_ir else "onnx",
        precision=precision,
        device=device,
        runtimes=("openvino",) if is_ir else ("onnxruntime",),
        parameters=source.parameters,
        flops_per_row=source.flops_per_row,
        scores=session.run(test_inputs),
        scored_runtime="openvino" if is_ir else "onnxruntime",
        scored_precision=executed,
        derived_from=source.name,
    )

"""The one small synchronous protocol every inference backend implements, and the registry that
creates backends by name with a lazy import (a CPU install never imports a GPU library)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

Inputs = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]  # by output name, every output with the batch's rows first
DeviceKind = Literal["cpu", "gpu"]


@dataclass(frozen=True)
class BackendConfig:
    model_path: Path
    threads: int = (
        0  # 0: the runtime's default (app.dataplane.serving fits them to the process's cores)
    )
    streams: int = 1  # OpenVINO infer requests / parallel batches
    precision_hint: str | None = None  # OpenVINO: "f32" for FP32 files; None = its default
    # False for a graph without a batch axis: the scheduler's leading axis of one row is taken
    # off before the run and put back on every output.
    batched: bool = True


class Backend(Protocol):
    name: str
    device_kind: DeviceKind
    execution_precision: str

    def load(self) -> None: ...

    def run(self, inputs: Inputs) -> Outputs: ...

    def close(self) -> None: ...


BACKENDS = {
    "openvino-cpu": "scheduler.openvino_backend:OpenVinoBackend",
    "onnxruntime-cpu": "scheduler.onnxruntime_backend:OnnxRuntimeCpuBackend",
    "onnxruntime-gpu": "scheduler.onnxruntime_backend:OnnxRuntimeGpuBackend",
}


def create_backend(kind: str, name: str, config: BackendConfig) -> Backend:
    if kind not in BACKENDS:
        raise ValueError(f"unknown backend {kind!r}; known: {sorted(BACKENDS)}")
    module_name, class_name = BACKENDS[kind].split(":")
    backend_class = getattr(importlib.import_module(module_name), class_name)
    backend: Backend = backend_class(name, config)
    return backend


def unbatch(inputs: Inputs) -> Inputs:
    """A one-row batch of a model without a batch axis, as the graph takes it."""
    return {name: array[0] for name, array in inputs.items()}


def rebatch(outputs: Outputs) -> Outputs:
    return {name: array[np.newaxis] for name, array in outputs.items()}

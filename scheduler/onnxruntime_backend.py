"""ONNX Runtime on CPU, and on GPU through the CUDA provider."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from scheduler.backend import BackendConfig, DeviceKind, Inputs, Outputs, rebatch, unbatch
from scheduler.errors import DeviceUnavailable

log = logging.getLogger(__name__)


class OnnxRuntimeCpuBackend:
    device_kind: DeviceKind = "cpu"
    execution_precision = "f32"

    def __init__(self, name: str, config: BackendConfig) -> None:
        self.name = name
        self._config = config
        self._session: Any = None

    def providers(self) -> list[Any]:
        return ["CPUExecutionProvider"]

    def load(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self._config.threads
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            str(self._config.model_path), options, providers=self.providers()
        )
        self._output_names = [o.name for o in self._session.get_outputs()]

    def run(self, inputs: Inputs) -> Outputs:
        # InferenceSession.run is thread-safe and releases the GIL while it computes.
        batched = self._config.batched
        values = self._session.run(None, inputs if batched else unbatch(inputs))
        outputs = {n: np.asarray(v) for n, v in zip(self._output_names, values, strict=True)}
        return outputs if batched else rebatch(outputs)

    def close(self) -> None:
        self._session = None


class OnnxRuntimeGpuBackend(OnnxRuntimeCpuBackend):
    device_kind: DeviceKind = "gpu"
    execution_precision = "gpu"

    def providers(self) -> list[Any]:
        import onnxruntime as ort

        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise DeviceUnavailable(f"no CUDA execution provider (available: {available})")
        # CUDA only: TensorRT builds an engine per new input shape (seconds each), and every
        # batch size the batcher forms is a new shape.
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    def load(self) -> None:
        import onnxruntime as ort

        # Loads CUDA and cuDNN from the nvidia-* wheels when that is how they were installed
        # (pip install onnxruntime-gpu[cuda,cudnn]); a system-wide CUDA is found without it.
        ort.preload_dlls()
        super().load()
        if "CUDAExecutionProvider" not in self._session.get_providers():
            raise DeviceUnavailable("the CUDA provider did not initialise (no GPU?)")
        log.info("%s runs on %s", self.name, self._session.get_providers()[0])

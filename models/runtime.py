"""Inference sessions over exported models (numpy only, no torch): ONNX Runtime and OpenVINO.

Both take named inputs as numpy arrays and return the first output (`run`) or every output by
name (`run_all`). Each records
the precision it actually executes in: OpenVINO's CPU plugin runs BF16 by default on CPUs with
AMX or AVX-512 BF16, whatever the model file says, so FP32 must be asked for explicitly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

OpenVinoPrecision = Literal["f32", "bf16", "f16"]


class Session(Protocol):
    runtime: str
    execution_precision: str

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...

    def run_all(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class OnnxRuntimeSession:
    runtime = "onnxruntime"

    def __init__(self, path: Path, intra_op_threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1 if intra_op_threads == 1 else 0
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.execution_precision = "f32"
        self.output_names = [o.name for o in self._session.get_outputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self._session.run(None, inputs)[0])

    def run_all(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._session.run(None, inputs)
        return {n: np.asarray(v) for n, v in zip(self.output_names, values, strict=True)}


class OpenVinoSession:
    runtime = "openvino"

    def __init__(
        self, path: Path, inference_precision: OpenVinoPrecision | None = "f32", threads: int = 0
    ) -> None:
        import openvino as ov

        core = ov.Core()
        config: dict[str, object] = {}
        if inference_precision is not None:
            config["INFERENCE_PRECISION_HINT"] = inference_precision
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
            config["NUM_STREAMS"] = 1
        self._compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self._request = self._compiled.create_infer_request()
        self.execution_precision = self._compiled.get_property(
            "INFERENCE_PRECISION_HINT"
        ).to_string()

        self.output_names = [output.get_any_name() for output in self._compiled.outputs]

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self._infer(inputs)[0])

    def run_all(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._infer(inputs)
        return {name: np.asarray(results[index]) for index, name in enumerate(self.output_names)}

    def _infer(self, inputs: dict[str, np.ndarray]) -> Any:
        """The results (copies) as the server's backend asks for them
        (`scheduler/openvino_backend.py`): inputs read in place, not through the copying
        dispatcher, so a variant's timing here is what it costs served."""
        return self._request.infer(inputs, share_inputs=True)

"""A model file's inputs and outputs as its graph declares them, read by the runtime that will
serve it (ONNX Runtime for `.onnx`, OpenVINO for IR `.xml`): Triton's auto-completed config.

Datatypes are KServe V2 names. A dimension the graph leaves open is -1. A model is batched when
every input's first dimension is open and its others fixed: the scheduler stacks requests along
the first (inputs of open inner dimensions could not be stacked; the model's config.toml can fix
them).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.artifacts.repository import RepositoryError, TensorSpec

# The V2 datatypes served here (every one both runtimes accept, BYTES excepted) as numpy dtypes.
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}  # fmt: skip
V2_DATATYPES = {dtype: name for name, dtype in NUMPY_DTYPES.items()}  # numpy dtype -> V2 name
# The same datatypes as each runtime names them.
ONNX_TYPES = {
    "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(int8)": "INT8",
    "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
    "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
}  # fmt: skip
OPENVINO_TYPES = {
    "boolean": "BOOL", "u8": "UINT8", "i8": "INT8", "i16": "INT16", "i32": "INT32",
    "i64": "INT64", "f16": "FP16", "f32": "FP32", "f64": "FP64",
}  # fmt: skip


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    # Read on every request: computed once (a frozen dataclass still has a __dict__ for them).
    @functools.cached_property
    def batched(self) -> bool:
        return all(
            len(t.shape) >= 1 and t.shape[0] == -1 and -1 not in t.shape[1:] for t in self.inputs
        )

    @functools.cached_property
    def input_specs(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Each input's datatype and shape, by name."""
        return {t.name: (t.datatype, t.shape) for t in self.inputs}

    @functools.cached_property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)


def read_signature(path: Path) -> Signature:
    """The graph's tensors; a RepositoryError naming the file when it cannot be read or declares
    a tensor of a datatype not served here."""
    if path.suffix == ".xml":
        return _openvino_signature(path)
    return _onnx_signature(path)


def _onnx_signature(path: Path) -> Signature:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # the runtime's own message says what is wrong with the graph
        raise RepositoryError(
            f"{path}: not a model ONNX Runtime can load: {_first_line(exc)}"
        ) from None

    def spec(node: Any, kind: str) -> TensorSpec:
        datatype = ONNX_TYPES.get(node.type)
        if datatype is None:
            raise RepositoryError(
                f"{path}: {kind} {node.name!r} is a {node.type}, not a datatype served here"
            )
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape)
        return TensorSpec(name=node.name, datatype=datatype, shape=shape)

    return Signature(
        tuple(spec(node, "input") for node in session.get_inputs()),
        tuple(spec(node, "output") for node in session.get_outputs()),
    )


def _openvino_signature(path: Path) -> Signature:
    import openvino as ov

    if not path.with_suffix(".bin").is_file():
        raise RepositoryError(f"{path}: its weights {path.with_suffix('.bin').name} are missing")
    try:
        model = ov.Core().read_model(str(path))
    except Exception as exc:
        raise RepositoryError(
            f"{path}: not a model OpenVINO can read: {_first_line(exc)}"
        ) from None

    def spec(port: Any, kind: str) -> TensorSpec:
        name = port.get_any_name()
        element = port.get_element_type().get_type_name()
        datatype = OPENVINO_TYPES.get(element)
        if datatype is None:
            raise RepositoryError(
                f"{path}: {kind} {name!r} is {element}, not a datatype served here"
            )
        shape = tuple(-1 if d.is_dynamic else d.get_length() for d in port.get_partial_shape())
        return TensorSpec(name=name, datatype=datatype, shape=shape)

    return Signature(
        tuple(spec(port, "input") for port in model.inputs),
        tuple(spec(port, "output") for port in model.outputs),
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__

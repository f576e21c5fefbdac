"""KServe V2 / Open Inference Protocol tensors: JSON and the binary-tensor extension (numpy only).

Binary extension: the body is a JSON header of `Inference-Header-Content-Length` bytes, then the
raw little-endian bytes of each input that declares `parameters.binary_data_size`, in input order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from app.errors import Unprocessable
from scheduler.errors import InvalidInput

HEADER_LENGTH = "inference-header-content-length"
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}  # fmt: skip


def parse_request(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON header and the binary tail (empty for a plain JSON request)."""
    if header_length is None:
        json_part, tail = body, b""
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise InvalidInput(f"Inference-Header-Content-Length: {header_length!r} is not valid")
        json_part, tail = body[: int(header_length)], body[int(header_length) :]
    try:
        header = orjson.loads(json_part)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body: not valid JSON ({exc})") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise InvalidInput("inputs: a list of input tensors is required")
    return header, tail


def decode_inputs(header: dict[str, Any], tail: bytes) -> dict[str, np.ndarray]:
    tensors: dict[str, np.ndarray] = {}
    position = 0
    for index, spec in enumerate(header["inputs"]):
        where = f"inputs[{index}]"
        if not isinstance(spec, dict):
            raise InvalidInput(f"{where}: must be an object")
        name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
        if not isinstance(name, str):
            raise InvalidInput(f"{where}.name: required")
        if datatype not in DTYPES:
            raise InvalidInput(f"{where}.datatype: {datatype!r} is not a V2 datatype")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise InvalidInput(f"{where}.shape: a list of non-negative integers is required")
        dtype = DTYPES[datatype]
        count = int(np.prod(shape)) if shape else 1
        size = (spec.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if size != count * dtype.itemsize or position + size > len(tail):
                raise InvalidInput(f"{where}.parameters.binary_data_size: {size} does not fit")
            array = np.frombuffer(tail, dtype=dtype.newbyteorder("<"), count=count, offset=position)
            position += size
        else:
            data = spec.get("data")
            if not isinstance(data, list):
                raise InvalidInput(f"{where}.data: required (or binary_data_size)")
            try:
                as_given = np.asarray(data)
                if dtype.kind in "iu" and as_given.dtype.kind not in "iub":
                    raise ValueError("expected integers")
                array = as_given.astype(dtype).reshape(-1)
            except (TypeError, ValueError) as exc:
                raise InvalidInput(f"{where}.data: not {datatype} values ({exc})") from None
            if array.size != count:
                raise InvalidInput(f"{where}.data: {array.size} values for shape {shape}")
        tensors[name] = array.reshape(shape)
    return tensors


def check_against(
    tensors: dict[str, np.ndarray], specs: Mapping[str, tuple[str, tuple[int, ...]]], max_rows: int
) -> dict[str, np.ndarray]:
    """Names, datatypes and shapes against the model's inputs; returns C-contiguous arrays."""
    if set(tensors) != set(specs):
        raise InvalidInput(f"inputs: expected {sorted(specs)}, got {sorted(tensors)}")
    rows = {len(t) for t in tensors.values() if t.ndim}
    for name, (datatype, shape) in specs.items():
        tensor = tensors[name]
        if tensor.dtype != DTYPES[datatype]:
            raise InvalidInput(f"inputs.{name}.datatype: expected {datatype}")
        if tensor.ndim != len(shape) or any(
            d not in (-1, s) for d, s in zip(shape, tensor.shape, strict=True)
        ):
            raise InvalidInput(
                f"inputs.{name}.shape: expected {list(shape)}, got {list(tensor.shape)}"
            )
    if len(rows) != 1 or 0 in rows:
        raise InvalidInput("inputs: every input needs the same, non-zero number of rows")
    if rows.pop() > max_rows:
        raise Unprocessable(f"inputs: more than {max_rows} rows")
    return {name: np.ascontiguousarray(t) for name, t in tensors.items()}


def encode_response(
    header: dict[str, Any], outputs: dict[str, np.ndarray], binary: set[str]
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length."""
    tail = []
    descriptions = []
    for name, array in outputs.items():
        description: dict[str, Any] = {
            "name": name,
            "datatype": next(k for k, v in DTYPES.items() if v == array.dtype),
            "shape": list(array.shape),
        }
        if name in binary:
            raw = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
            description["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            description["data"] = array.reshape(-1).tolist()
        descriptions.append(description)
    head = orjson.dumps({**header, "outputs": descriptions})
    if not tail:
        return head, None
    return head + b"".join(tail), len(head)


def binary_outputs(header: dict[str, Any], output_names: list[str]) -> set[str]:
    """Outputs asked for as binary, per output or for all (`binary_data_output`)."""
    default = bool((header.get("parameters") or {}).get("binary_data_output", False))
    requested = header.get("outputs")
    if not requested:
        return set(output_names) if default else set()
    chosen = set()
    for spec in requested:
        name = spec.get("name") if isinstance(spec, dict) else None
        if name not in output_names:
            raise InvalidInput(f"outputs: unknown output {name!r}")
        if (spec.get("parameters") or {}).get("binary_data", default):
            chosen.add(name)
    return chosen

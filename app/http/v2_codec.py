"""KServe V2 / Open Inference Protocol tensors: JSON and the binary-tensor extension (numpy only).

Binary extension: the body is a JSON header of `Inference-Header-Content-Length` bytes, then the
raw little-endian bytes of each input that declares `parameters.binary_data_size`, in input order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from app.http.v2_schema import InferenceRequest, decode_request
from models.artifacts.signature import NUMPY_DTYPES, V2_DATATYPES
from scheduler.errors import InvalidInput

HEADER_LENGTH = "inference-header-content-length"
DTYPES = NUMPY_DTYPES  # KServe V2 datatype -> numpy dtype


def parse_request(body: bytes, header_length: str | None) -> tuple[InferenceRequest, bytes]:
    """The typed JSON header and the binary tail (empty for a plain JSON request)."""
    if header_length is None:
        return decode_request(body), b""
    if not (header_length.isascii() and header_length.isdigit()) or int(header_length) > len(body):
        shown = header_length[:20]
        raise InvalidInput(f"Inference-Header-Content-Length: {shown!r} is not valid")
    return decode_request(body[: int(header_length)]), body[int(header_length) :]


# Which kinds of JSON values (as numpy reads them) each kind of datatype accepts.
ACCEPTED_KINDS = {"b": "b", "i": "biu", "u": "biu", "f": "biuf"}


def decode_inputs(request: InferenceRequest, tail: bytes) -> dict[str, np.ndarray]:
    tensors: dict[str, np.ndarray] = {}
    position = 0
    for index, spec in enumerate(request.inputs):
        where = f"inputs[{index}]"
        if spec.name in tensors:
            raise InvalidInput(f"{where}.name: {spec.name[:64]!r} is given twice")
        if spec.datatype == "BYTES":
            raise InvalidInput(f"{where}.datatype: BYTES tensors are not served here")
        if spec.datatype not in DTYPES:
            raise InvalidInput(f"{where}.datatype: {spec.datatype[:32]!r} is not a V2 datatype")
        dtype = DTYPES[spec.datatype]
        count = math.prod(spec.shape)  # Python integers: no overflow
        size = spec.parameters.binary_data_size if spec.parameters else None
        if size is not None:
            if size != count * dtype.itemsize or position + size > len(tail):
                raise InvalidInput(
                    f"{where}.parameters.binary_data_size: {size} bytes do not fit shape "
                    f"{spec.shape} of {spec.datatype} ({len(tail) - position} bytes left)"
                )
            array = np.frombuffer(tail, dtype=dtype.newbyteorder("<"), count=count, offset=position)
            position += size
        elif spec.data is None:
            raise InvalidInput(f"{where}.data: required (or parameters.binary_data_size)")
        else:
            array = json_values(spec.data, dtype, f"{where}.data", spec.datatype)
            if array.size != count:
                raise InvalidInput(f"{where}.data: {array.size} values for shape {spec.shape}")
        tensors[spec.name] = array.reshape(spec.shape)
    if position != len(tail):
        raise InvalidInput(f"body: {len(tail) - position} bytes after the binary tensors")
    return tensors


def json_values(data: list[Any], dtype: np.dtype[Any], where: str, datatype: str) -> np.ndarray:
    """`data` (flat or nested) as a flat array of `dtype`, refusing values of another kind or
    out of the datatype's range rather than converting them silently."""
    try:
        given = np.asarray(data)
    except (TypeError, ValueError) as exc:  # ragged nesting
        raise InvalidInput(f"{where}: not {datatype} values ({str(exc)[:80]})") from None
    if given.size and given.dtype.kind not in ACCEPTED_KINDS[dtype.kind]:
        raise InvalidInput(f"{where}: not {datatype} values")
    if given.size and dtype.kind in "iu" and given.dtype.kind in "iu":
        info = np.iinfo(dtype)
        if given.min() < info.min or given.max() > info.max:
            raise InvalidInput(f"{where}: values outside the range of {datatype}")
    return given.astype(dtype).reshape(-1)


def encode_response(
    header: dict[str, Any], outputs: dict[str, np.ndarray], binary: set[str]
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length."""
    tail = []
    descriptions = []
    for name, array in outputs.items():
        description: dict[str, Any] = {
            "name": name,
            "datatype": V2_DATATYPES[array.dtype],
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


def binary_outputs(request: InferenceRequest, output_names: Sequence[str]) -> set[str]:
    """Outputs asked for as binary, per output or for all (`binary_data_output`)."""
    default = bool(request.parameters and request.parameters.binary_data_output)
    if not request.outputs:
        return set(output_names) if default else set()
    chosen = set()
    for index, spec in enumerate(request.outputs):
        if spec.name not in output_names:
            raise InvalidInput(f"outputs[{index}].name: unknown output {spec.name[:64]!r}")
        asked = spec.parameters.binary_data if spec.parameters else None
        if default if asked is None else asked:
            chosen.add(spec.name)
    return chosen

"""A request's tensors against the model's inputs (numpy only): every transport decodes its own
wire format into arrays, and the data plane checks them here, in one way."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from app.dataplane.errors import Unprocessable
from models.artifacts.feature_tables import CATEGORICAL_INPUT, DENSE_INPUT
from models.artifacts.repository import Manifest
from models.artifacts.signature import NUMPY_DTYPES
from scheduler.errors import InvalidInput

MAX_DIMENSIONS = 16  # of one tensor (numpy's own limit is 64)


def check_shape(shape: Sequence[int], where: str) -> None:
    """A shape a tensor may have: at most MAX_DIMENSIONS, none negative."""
    if len(shape) > MAX_DIMENSIONS:
        raise InvalidInput(f"{where}: {len(shape)} dimensions, at most {MAX_DIMENSIONS}")
    if any(d < 0 for d in shape):
        raise InvalidInput(f"{where}: {list(shape)} has a negative dimension")


def check_against(
    tensors: dict[str, np.ndarray], specs: Mapping[str, tuple[str, tuple[int, ...]]], max_rows: int,
    batched: bool = True,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Names, datatypes and shapes against the model's inputs (-1: any size), and for a batched
    model the same number of rows in each; returns C-contiguous arrays."""
    if set(tensors) != set(specs):
        given = sorted(tensors)[:8]
        raise InvalidInput(f"inputs: expected {sorted(specs)[:8]}, got {given}")
    rows = {len(t) for t in tensors.values() if t.ndim}
    for name, (datatype, shape) in specs.items():
        tensor = tensors[name]
        if tensor.dtype != NUMPY_DTYPES[datatype]:
            raise InvalidInput(f"inputs.{name}.datatype: expected {datatype}")
        if tensor.ndim != len(shape) or any(
            d not in (-1, s) for d, s in zip(shape, tensor.shape, strict=True)
        ):
            raise InvalidInput(
                f"inputs.{name}.shape: expected {list(shape)}, got {list(tensor.shape)}"
            )
    if not batched:
        return {name: np.ascontiguousarray(t) for name, t in tensors.items()}
    if len(rows) != 1 or 0 in rows:
        raise InvalidInput("inputs: every input needs the same, non-zero number of rows")
    if rows.pop() > max_rows:
        raise Unprocessable(f"inputs: more than {max_rows} rows")
    return {name: np.ascontiguousarray(t) for name, t in tensors.items()}


def check_built(inputs: dict[str, np.ndarray], manifest: Manifest) -> None:
    """A built model's inputs: indices within each field's vocabulary, dense values finite."""
    categorical = inputs[CATEGORICAL_INPUT]
    sizes = np.array([manifest.vocabulary_sizes[f] for f in manifest.categorical_fields])
    bad = (categorical < 0) | (categorical >= sizes)
    if bad.any():
        row, column = (int(x) for x in np.argwhere(bad)[0])
        field = manifest.categorical_fields[column]
        raise Unprocessable(
            f"{CATEGORICAL_INPUT}: row {row} field {field!r} index {categorical[row, column]} "
            f"outside 0..{sizes[column] - 1}"
        )
    if not np.isfinite(inputs[DENSE_INPUT]).all():
        raise Unprocessable(f"{DENSE_INPUT}: values must be finite (no NaN or infinity)")


def rows_array(rows: Sequence[Sequence[float]], dtype: type, width: int, name: str) -> np.ndarray:
    """/v1/score's rows of one input as an array, each row `width` values."""
    for index, row in enumerate(rows):
        if len(row) != width:
            raise Unprocessable(f"{name}: row {index} has {len(row)} values, expected {width}")
    try:
        return np.asarray(rows, dtype=dtype)
    except OverflowError:
        raise Unprocessable(f"{name}: a value outside the range of {np.dtype(dtype)}") from None

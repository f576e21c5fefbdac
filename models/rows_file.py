"""Rows of model inputs for `python -m models accelerate`: the held-out rows a variant is gated
on, and the calibration rows INT8 is calibrated on (numpy only).

The format: an `.npz` file (`numpy.savez`) with one array per model input, named after the input,
of its datatype and of its shape with the batch axis first; optionally `labels`, binary (0 or 1,
one per row) for the first output, and `labels.<output>` for any other output. Every mistake is a
RowsFileError naming the file and the array.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.artifacts.signature import NUMPY_DTYPES, Signature

LABELS = "labels"


class RowsFileError(ValueError):
    """A rows file that cannot be used; the message names the file and the array."""


@dataclass(frozen=True)
class Rows:
    inputs: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]  # output name -> binary labels, for the outputs that have them

    @property
    def count(self) -> int:
        return len(next(iter(self.inputs.values())))


def read_rows(path: Path, signature: Signature) -> Rows:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise RowsFileError(f"{path}: not a readable .npz file ({exc})") from None
    with archive:
        arrays = {name: archive[name] for name in archive.files}
    inputs: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        array = arrays.get(spec.name)
        if array is None:
            raise RowsFileError(
                f"{path}: no array {spec.name!r} (the model's inputs: "
                f"{', '.join(s.name for s in signature.inputs)}; the file has "
                f"{', '.join(sorted(arrays)) or 'none'})"
            )
        dtype = NUMPY_DTYPES[spec.datatype]
        if array.dtype != dtype:
            raise RowsFileError(f"{path}: {spec.name!r} is {array.dtype}, the model takes {dtype}")
        if array.ndim != len(spec.shape) or any(
            d not in (-1, s) for d, s in zip(spec.shape[1:], array.shape[1:], strict=True)
        ):
            raise RowsFileError(
                f"{path}: {spec.name!r} has shape {list(array.shape)}, the model takes "
                f"{list(spec.shape)}"
            )
        inputs[spec.name] = array
    counts = {len(a) for a in inputs.values()}
    if len(counts) != 1 or 0 in counts:
        raise RowsFileError(f"{path}: every input needs the same, non-zero number of rows")
    rows = counts.pop()
    labels: dict[str, np.ndarray] = {}
    outputs = [o.name for o in signature.outputs]
    for name, array in arrays.items():
        if name != LABELS and not name.startswith(LABELS + "."):
            continue
        output = outputs[0] if name == LABELS else name.removeprefix(LABELS + ".")
        if output not in outputs:
            raise RowsFileError(f"{path}: {name!r} names no output ({', '.join(outputs)})")
        flat = np.asarray(array).reshape(-1) if array.ndim == 2 and array.shape[1] == 1 else array
        if flat.shape != (rows,) or not np.isin(flat, (0, 1)).all():
            raise RowsFileError(f"{path}: {name!r} must be {rows} binary labels (0 or 1)")
        labels[output] = flat.astype(np.float32)
    return Rows(inputs, labels)

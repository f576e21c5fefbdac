"""A CTR table for `python -m models build --data FILE`: Criteo's layout, read and encoded.

The format (Criteo's Display Advertising Challenge files, `train.txt` / `day_N`): one row per
line, fields separated by a tab, no header: the label (0 or 1), then `[table] dense_columns`
numbers (integers in Criteo's, possibly negative), then `[table] categorical_columns` tokens
(8-digit hex strings in Criteo's). Any field may be empty (missing). A `.gz` file is read as it
is. Fields are named as in Criteo: I1..In for the dense, C1..Cm for the categorical.

Encoding, fitted on the training rows only (as a server would see it: a token first seen after
training gets the out-of-vocabulary index):
- categorical: per field, the tokens seen at least `min_token_count` times in training get the
  indices 1..V in sorted order; any other token, and a missing field, gets 0. `vocabularies.json`
  lists each field's tokens (token i has index i + 1), what a client encodes requests with;
- dense: a missing value is 0; then `log1p(max(x, 0))` with `dense_transform = "log1p"` (DLRM's
  transform of Criteo's counts), or the value as it is with "none".
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import numpy.typing as npt

from models.settings import TableSettings

log = logging.getLogger(__name__)
PROGRESS_ROWS = 1_000_000


class TableError(ValueError):
    """A data file that cannot be used; the message names the file, the line and the field."""


@dataclass(frozen=True)
class RawTable:
    """The rows as read: labels, dense values, and per field a provisional id per distinct token."""

    source: Path
    labels: npt.NDArray[np.float32]
    dense: npt.NDArray[np.float32]  # missing is 0, not yet transformed
    token_ids: npt.NDArray[np.int64]  # [rows, fields]: index into tokens[field]; -1 missing
    tokens: tuple[tuple[str, ...], ...]  # per field, its distinct tokens in order of appearance
    dense_fields: tuple[str, ...]
    categorical_fields: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Encoded:
    """Model inputs for every row, with the vocabularies fitted on the training rows."""

    categorical: npt.NDArray[np.int64]  # [rows, fields]; 0 is out of vocabulary
    dense: npt.NDArray[np.float32]
    labels: npt.NDArray[np.float32]
    vocabularies: dict[str, tuple[str, ...]]  # field -> tokens; token i has index i + 1

    @property
    def vocabulary_sizes(self) -> list[int]:
        return [len(tokens) + 1 for tokens in self.vocabularies.values()]


def open_text(path: Path) -> TextIO:
    """The file as text lines; Criteo's files come gzipped (`.gz`) and are read as they are."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="\n")
    return path.open(encoding="utf-8", newline="\n")


def read_table(path: Path, settings: TableSettings) -> RawTable:
    """Read a Criteo-layout file; a TableError names the file, the line and the field."""
    dense_count, categorical_count = settings.dense_columns, settings.categorical_columns
    width = 1 + dense_count + categorical_count
    labels: list[float] = []
    dense: list[list[float]] = []
    ids: list[list[int]] = []
    seen: list[dict[str, int]] = [{} for _ in range(categorical_count)]
    dense_fields = tuple(f"I{i + 1}" for i in range(dense_count))
    categorical_fields = tuple(f"C{i + 1}" for i in range(categorical_count))
    try:
        handle = open_text(path)
    except OSError as exc:
        raise TableError(f"{path}: cannot read it: {exc.strerror or exc}") from exc
    with handle:
        try:
            for number, line in enumerate(handle, start=1):
                if settings.max_rows and len(labels) >= settings.max_rows:
                    break
                fields = line.rstrip("\r\n").split(settings.separator)
                if len(fields) != width:
                    raise TableError(
                        f"{path}:{number}: {len(fields)} fields, expected {width} (the label, "
                        f"{dense_count} dense, {categorical_count} categorical; [table] settings)"
                    )
                if fields[0] not in ("0", "1"):
                    raise TableError(f"{path}:{number}: label {fields[0][:20]!r} is not 0 or 1")
                labels.append(float(fields[0]))
                row = []
                for name, text in zip(dense_fields, fields[1 : 1 + dense_count], strict=True):
                    try:
                        row.append(float(text) if text else 0.0)
                    except ValueError:
                        raise TableError(
                            f"{path}:{number}: dense field {name} is {text[:20]!r}, not a number"
                        ) from None
                dense.append(row)
                ids.append([
                    seen[f].setdefault(token, len(seen[f])) if token else -1
                    for f, token in enumerate(fields[1 + dense_count :])
                ])  # fmt: skip
                if number % PROGRESS_ROWS == 0:
                    log.info("%s: %d rows read", path.name, number)
        except (OSError, EOFError, UnicodeDecodeError) as exc:  # a truncated gzip, not text
            raise TableError(f"{path}: cannot read it: {exc}") from None
    if not labels:
        raise TableError(f"{path}: no rows")
    values = np.asarray(dense, dtype=np.float64).reshape(len(labels), dense_count)
    if not np.isfinite(values).all():
        row, column = np.argwhere(~np.isfinite(values))[0]
        raise TableError(f"{path}:{row + 1}: dense field {dense_fields[column]} is not finite")
    return RawTable(
        source=path,
        labels=np.asarray(labels, dtype=np.float32),
        dense=values.astype(np.float32),
        token_ids=np.asarray(ids, dtype=np.int64).reshape(len(labels), categorical_count),
        tokens=tuple(tuple(s) for s in seen),
        dense_fields=dense_fields,
        categorical_fields=categorical_fields,
    )


def encode(table: RawTable, train_rows: npt.NDArray[np.int64], settings: TableSettings) -> Encoded:
    """Vocabularies from the training rows' token counts; every row encoded with them."""
    categorical = np.zeros(table.token_ids.shape, dtype=np.int64)
    vocabularies: dict[str, tuple[str, ...]] = {}
    for f, name in enumerate(table.categorical_fields):
        column = table.token_ids[:, f]
        present = column[train_rows]
        counts = np.bincount(present[present >= 0], minlength=len(table.tokens[f]))
        kept = np.flatnonzero(counts >= settings.min_token_count).tolist()
        order = sorted(kept, key=lambda i: table.tokens[f][i])
        index = np.zeros(len(table.tokens[f]) + 1, dtype=np.int64)  # the last slot: missing
        index[order] = np.arange(1, len(order) + 1)
        categorical[:, f] = index[column]  # -1 (missing) reads the last slot, 0
        vocabularies[name] = tuple(table.tokens[f][i] for i in order)
    dense = table.dense
    if settings.dense_transform == "log1p":
        dense = np.log1p(np.maximum(dense, 0)).astype(np.float32)
    return Encoded(categorical, dense, table.labels, vocabularies)


def write_table(path: Path, labels: np.ndarray, dense: np.ndarray, tokens: np.ndarray) -> None:
    """Write rows in the layout `read_table` reads (the synthetic data's file, for tests)."""
    with path.open("w", encoding="utf-8") as f:
        for label, numbers, words in zip(labels, dense, tokens, strict=True):
            cells = [str(int(label)), *map(str, numbers), *map(str, words)]
            f.write("\t".join(cells) + "\n")

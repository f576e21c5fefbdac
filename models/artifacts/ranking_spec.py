"""How /v1/rank builds a model's inputs for (user, candidate items) from feature tables and the
request (numpy and pydantic only; the serving path uses this).

A ranking spec names, for each model input, the parts concatenated along its last axis, in order:
`user.categorical` (the user's row of categorical indices), `item.categorical` and `item.dense`
(each candidate's rows), or `request.<name>` (values the rank request sends in `context`, the same
for every candidate). A plain model gets /v1/rank from `[ranking]` in its config.toml and a
`feature_tables.npz` in its version folder; a built version's spec follows from its manifest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from models.artifacts.feature_tables import CATEGORICAL_INPUT, DENSE_INPUT, FeatureTables
from models.artifacts.repository import RepositoryError, TensorSpec
from models.artifacts.signature import NUMPY_DTYPES

TABLE_PARTS = ("user.categorical", "item.categorical", "item.dense")
REQUEST_PART = re.compile(r"^request\.([A-Za-z_][A-Za-z0-9_]*)$")
# The datatypes /v1/rank assembles inputs in: the indices' and the values'.
DTYPES = {k: NUMPY_DTYPES[k] for k in ("INT32", "INT64", "FP16", "FP32", "FP64")}


class RankingSpec(BaseModel):
    """`[ranking]` in a model's config.toml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    feature_tables: str = Field(
        "feature_tables.npz", description="the feature tables' file in each version folder"
    )
    score_output: str | None = Field(None, description="the output ranked by (default: the first)")
    inputs: dict[str, tuple[str, ...]] = Field(
        description="model input -> its parts, concatenated along the last axis"
    )
    request: dict[str, int] = Field(
        default_factory=dict, description="request.<name> parts: name -> number of values"
    )


def built_spec(score_output: str) -> RankingSpec:
    """What a built version's inputs are: the user's and the item's categorical fields, then the
    item's dense fields."""
    return RankingSpec(
        score_output=score_output,
        inputs={
            CATEGORICAL_INPUT: ("user.categorical", "item.categorical"),
            DENSE_INPUT: ("item.dense",),
        },
    )


@dataclass(frozen=True)
class Assembler:
    """Builds the inputs of one rank request: checked once against the model and the tables."""

    spec: RankingSpec
    tables: FeatureTables
    dtypes: dict[str, np.dtype[np.generic]]
    score_output: str

    @classmethod
    def create(cls, spec: RankingSpec, tables: FeatureTables, inputs: tuple[TensorSpec, ...],
               outputs: tuple[TensorSpec, ...], where: Path) -> Assembler:  # fmt: skip
        """Raises RepositoryError naming `where` when the spec does not fit the model or tables."""
        by_name = {t.name: t for t in inputs}
        if set(spec.inputs) != set(by_name):
            raise RepositoryError(
                f"{where}: ranking.inputs names {sorted(spec.inputs)}, the model's inputs are "
                f"{sorted(by_name)}"
            )
        widths = {"user.categorical": len(tables.user_fields),
                  "item.categorical": len(tables.item_fields),
                  "item.dense": len(tables.dense_fields)}  # fmt: skip
        for name, parts in spec.inputs.items():
            tensor = by_name[name]
            if tensor.datatype not in DTYPES or len(tensor.shape) != 2:
                raise RepositoryError(
                    f"{where}: ranking.inputs.{name}: /v1/rank builds [rows, width] inputs of "
                    f"{', '.join(DTYPES)}; the model's is {tensor.datatype} {list(tensor.shape)}"
                )
            width = 0
            for part in parts:
                match = REQUEST_PART.match(part)
                if match is not None:
                    if match[1] not in spec.request:
                        raise RepositoryError(
                            f"{where}: ranking.inputs.{name}: {part} is not in ranking.request"
                        )
                    if tensor.datatype.startswith("INT"):
                        raise RepositoryError(
                            f"{where}: ranking.inputs.{name}: request values are numbers, the "
                            f"input is {tensor.datatype}"
                        )
                    width += spec.request[match[1]]
                elif part in widths:
                    width += widths[part]
                else:
                    raise RepositoryError(
                        f"{where}: ranking.inputs.{name}: unknown part {part!r} (known: "
                        f"{', '.join(TABLE_PARTS)}, request.<name>)"
                    )
            if tensor.shape[1] not in (-1, width):
                raise RepositoryError(
                    f"{where}: ranking.inputs.{name}: its parts are {width} wide, the input "
                    f"{tensor.shape[1]}"
                )
        score = spec.score_output or outputs[0].name
        if score not in {o.name for o in outputs}:
            raise RepositoryError(f"{where}: ranking.score_output: no output {score!r}")
        dtypes = {name: DTYPES[by_name[name].datatype] for name in spec.inputs}
        return cls(spec, tables, dtypes, score)

    def check_context(self, context: dict[str, list[float]] | None) -> dict[str, np.ndarray]:
        """The request's context values by name; a ValueError naming the field otherwise."""
        given = context or {}
        unknown = sorted(set(given) - set(self.spec.request))
        if unknown:
            raise ValueError(f"context.{unknown[0]}: not an input of this model")
        values = {}
        for name, width in self.spec.request.items():
            if name not in given:
                raise ValueError(f"context.{name}: required ({width} numbers)")
            array = np.asarray(given[name], dtype=np.float64)
            if array.shape != (width,) or not np.isfinite(array).all():
                raise ValueError(f"context.{name}: {width} finite numbers are required")
            values[name] = array
        return values

    def assemble(self, user: np.ndarray, item_categorical: np.ndarray, item_dense: np.ndarray,
                 context: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # fmt: skip
        """The inputs for one user's row and its candidates' rows (from the tables or a store)."""
        rows = len(item_categorical)
        inputs = {}
        for name, parts in self.spec.inputs.items():
            dtype = self.dtypes[name]
            pieces = []
            for part in parts:
                if part == "user.categorical":
                    pieces.append(np.broadcast_to(user, (rows, len(user))))
                elif part == "item.categorical":
                    pieces.append(item_categorical)
                elif part == "item.dense":
                    pieces.append(item_dense)
                else:
                    value = context[part.removeprefix("request.")]
                    pieces.append(np.broadcast_to(value, (rows, len(value))))
            joined = np.concatenate(pieces, axis=1) if len(pieces) > 1 else pieces[0]
            inputs[name] = np.ascontiguousarray(joined, dtype=dtype)
        return inputs

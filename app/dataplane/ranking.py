"""Ranking, once: a rank request's ids become feature rows and model inputs (seen items dropped),
and scores become the top-k answer. The data plane and the benchmarks' baseline and front end
call it, so they compare serving, not different request handling."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.dataplane.errors import PayloadTooLarge, Unprocessable
from app.dataplane.schemas import RankRequest
from app.settings import LimitSettings
from models.artifacts.feature_tables import OOV_ROW, FeatureTables
from models.artifacts.model_config import CONFIG_FILE
from models.artifacts.ranking_spec import Assembler, built_spec
from models.artifacts.repository import ModelVersion, RepositoryError
from models.artifacts.servable import ServableVersion

Ids = Sequence[str] | np.ndarray  # candidate ids: a list, or the catalog's array
Inputs = dict[str, np.ndarray]
SeenItems = tuple[np.ndarray, np.ndarray]  # CSR: indptr by user row, item rows


@dataclass(frozen=True)
class Candidates:
    """What one rank request scores: the user's row, the candidates left and their inputs."""

    user_row: int
    ids: Ids
    unknown: list[str]  # candidate ids not in the catalog, scored through the OOV row
    inputs: Inputs | None  # None when no candidate is left to score

    @property
    def user_known(self) -> bool:
        return self.user_row != OOV_ROW


class Ranker:
    def __init__(self, model_name: str, model_version: int, assembler: Assembler,
                 seen: SeenItems | None, limits: LimitSettings) -> None:  # fmt: skip
        self.model_name = model_name
        self.model_version = model_version
        self.assembler = assembler
        self.tables: FeatureTables = assembler.tables
        self.seen = seen
        self.limits = limits

    @classmethod
    def for_version(cls, version: ModelVersion, limits: LimitSettings) -> Ranker:
        """A built version: its manifest says what its inputs are."""
        manifest = version.manifest
        spec = built_spec(manifest.outputs[0].name)
        assembler = Assembler.create(spec, version.tables, manifest.inputs, manifest.outputs,
                                     version.path / "manifest.json")  # fmt: skip
        return cls(manifest.model_name, manifest.model_version, assembler,
                   version.load_seen_items(), limits)  # fmt: skip

    @classmethod
    def for_plain(cls, version: ServableVersion, limits: LimitSettings) -> Ranker | None:
        """A plain version with `[ranking]` in its config.toml and feature tables beside it."""
        spec = version.config.ranking
        if spec is None:
            return None
        where = version.path.parent / CONFIG_FILE
        path = version.path / spec.feature_tables
        try:
            tables = FeatureTables.load(path)
        except (OSError, KeyError, ValueError) as exc:
            raise RepositoryError(f"{path}: not feature tables ranking can use: {exc}") from None
        signature = version.signature
        assembler = Assembler.create(spec, tables, signature.inputs, signature.outputs, where)
        return cls(version.model, version.number, assembler, None, limits)

    def candidates(self, body: RankRequest, with_inputs: bool = True) -> Candidates:
        """ids -> feature rows -> (seen items dropped) -> model inputs (unless `with_inputs` is
        false: the benchmarks' front end, which scores nothing). Raises a 4xx error."""
        tables = self.tables
        user_row = int(tables.user_rows([str(body.user_id)])[0])
        try:
            context = self.assembler.check_context(body.context)
        except ValueError as exc:
            raise Unprocessable(str(exc)) from None
        ids, item_rows, unknown = self.candidate_rows(body)
        if body.exclude_seen and self.seen is None:
            raise Unprocessable("exclude_seen: this model version has no table of seen items")
        if body.exclude_seen and self.seen is not None and user_row != OOV_ROW:
            indptr, seen_rows = self.seen
            keep = ~np.isin(item_rows, seen_rows[indptr[user_row] : indptr[user_row + 1]])
            ids, item_rows = np.asarray(ids)[keep], item_rows[keep]
        inputs = None
        if with_inputs and len(item_rows):
            inputs = self.assembler.assemble(user_row, item_rows, context)
        return Candidates(user_row, ids, unknown, inputs)

    def candidate_rows(self, body: RankRequest) -> tuple[Ids, np.ndarray, list[str]]:
        """The candidates' ids, their item rows, and the ids not in the catalog."""
        limits = self.limits
        if body.k > limits.max_k:
            raise Unprocessable(f"k: at most {limits.max_k}, got {body.k}")
        if body.candidates is None:
            catalog = self.tables.item_ids  # already a unicode array: no per-request copy
            return catalog, np.arange(1, len(catalog) + 1, dtype=np.int64), []
        if len(body.candidates) > limits.max_candidates:
            raise PayloadTooLarge(
                f"candidates: {len(body.candidates)} items, limit {limits.max_candidates}"
            )
        ids = list(map(str, body.candidates))
        item_rows = self.tables.item_rows(ids)
        unknown = [ids[i] for i in np.flatnonzero(item_rows == OOV_ROW)]
        return ids, item_rows, unknown

    def response(self, candidates: Candidates, scores: np.ndarray, variants: dict[str, str],
                 k: int) -> dict[str, Any]:  # fmt: skip
        """The RankResponse document, as plain values: validating a response the server builds
        itself would cost more than the inference (OpenAPI still documents it)."""
        ids = candidates.ids
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "variants": variants,
            "user_known": candidates.user_known,
            "unknown_items": candidates.unknown,
            "items": [{"item_id": str(ids[i]), "score": float(scores[i])}
                      for i in top_k(scores, k)],
        }  # fmt: skip


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, best first (ties in input order)."""
    k = min(k, len(scores))
    if k == 0:
        return np.empty(0, dtype=np.int64)
    top = np.argpartition(-scores, k - 1)[:k]
    return top[np.argsort(-scores[top], kind="stable")]

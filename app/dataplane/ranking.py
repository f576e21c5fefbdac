"""Ranking, once: a rank request's ids become feature rows (from the version's tables, or from
an online store: `features.py`) and model inputs (seen items dropped), and scores become the
top-k answer. The data plane and the benchmarks' baseline and front end call it, so they compare
serving, not different request handling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from app.dataplane.errors import PayloadTooLarge, Unprocessable
from app.dataplane.feature_rows import FeatureRows, Ids
from app.dataplane.schemas import RankRequest
from app.settings import LimitSettings
from models.artifacts.feature_rows import RowCodec
from models.artifacts.feature_tables import OOV_ROW, FeatureTables
from models.artifacts.model_config import CONFIG_FILE
from models.artifacts.ranking_spec import Assembler, built_spec
from models.artifacts.repository import ModelVersion, RepositoryError
from models.artifacts.servable import ServableVersion

Inputs = dict[str, np.ndarray]
SeenItems = tuple[np.ndarray, np.ndarray]  # CSR: indptr by user row, item rows


@dataclass(frozen=True)
class Candidates:
    """What one rank request scores: the candidates left and their inputs."""

    user_known: bool
    ids: Ids
    unknown: list[str]  # candidate ids not in the catalog, scored through the OOV row
    inputs: Inputs | None  # None when no candidate is left to score
    degraded: tuple[str, ...] = ()  # sides an online store failed to give (default rows used)


class Ranker:
    def __init__(self, model_name: str, model_version: int, assembler: Assembler,
                 seen: SeenItems | None, limits: LimitSettings,
                 vocabularies: tuple[int, ...]) -> None:  # fmt: skip
        self.model_name = model_name
        self.model_version = model_version
        self.assembler = assembler
        self.tables: FeatureTables = assembler.tables
        self.seen = seen
        self.limits = limits
        # How rows from an online store must look: the tables' widths, indices within the
        # vocabularies (an index beyond one would fail the whole batch it joins).
        self.codec = RowCodec.for_tables(self.tables, vocabularies)

    @classmethod
    def for_version(cls, version: ModelVersion, limits: LimitSettings) -> Ranker:
        """A built version: its manifest says what its inputs are."""
        manifest = version.manifest
        spec = built_spec(manifest.outputs[0].name)
        assembler = Assembler.create(spec, version.tables, manifest.inputs, manifest.outputs,
                                     version.path / "manifest.json")  # fmt: skip
        sizes = tuple(manifest.vocabulary_sizes[f] for f in version.tables.categorical_fields)
        return cls(manifest.model_name, manifest.model_version, assembler,
                   version.load_seen_items(), limits, sizes)  # fmt: skip

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
        # No vocabulary sizes beside a plain model: its rows stay within what its tables use.
        columns = [*tables.user_categorical.T, *tables.item_categorical.T]
        sizes = tuple(int(column.max()) + 1 for column in columns)
        return cls(version.model, version.number, assembler, None, limits, sizes)

    def candidates(self, body: RankRequest, with_inputs: bool = True) -> Candidates:
        """From the version's tables: ids -> feature rows -> (seen items dropped) -> model inputs
        (unless `with_inputs` is false: the benchmarks' front end, which scores nothing). Raises a
        4xx error."""
        context = self.context(body)
        return self.scored(body, self.table_rows(body), context, with_inputs)

    def context(self, body: RankRequest) -> dict[str, np.ndarray]:
        """The request's context values, checked (a 4xx naming the field otherwise)."""
        try:
            return self.assembler.check_context(body.context)
        except ValueError as exc:
            raise Unprocessable(str(exc)) from None

    def table_rows(self, body: RankRequest) -> FeatureRows:
        tables = self.tables
        user_row = int(tables.user_rows([str(body.user_id)])[0])
        ids = self.candidate_ids(body)
        if body.candidates is None:
            item_rows, unknown = np.arange(1, len(ids) + 1, dtype=np.int64), []
        else:
            item_rows = tables.item_rows(ids)
            unknown = [ids[int(i)] for i in np.flatnonzero(item_rows == OOV_ROW)]
        seen = None
        if body.exclude_seen:
            if self.seen is None:
                raise Unprocessable("exclude_seen: this model version has no table of seen items")
            seen = np.zeros(len(item_rows), dtype=bool)
            if user_row != OOV_ROW:
                indptr, seen_rows = self.seen
                seen = np.isin(item_rows, seen_rows[indptr[user_row] : indptr[user_row + 1]])
        return FeatureRows(tables.user_categorical[user_row], user_row != OOV_ROW, ids,
                           tables.item_categorical[item_rows], tables.item_dense[item_rows],
                           unknown, seen)  # fmt: skip

    def scored(self, body: RankRequest, rows: FeatureRows, context: dict[str, np.ndarray],
               with_inputs: bool = True) -> Candidates:  # fmt: skip
        """Rows -> the candidates left once seen items are dropped, and their model inputs."""
        ids, categorical, dense = rows.ids, rows.item_categorical, rows.item_dense
        if body.exclude_seen and rows.seen is not None and rows.seen.any():
            keep = ~rows.seen
            ids, categorical, dense = np.asarray(ids)[keep], categorical[keep], dense[keep]
        inputs = None
        if with_inputs and len(categorical):
            inputs = self.assembler.assemble(rows.user, categorical, dense, context)
        return Candidates(rows.user_known, ids, rows.unknown, inputs, rows.degraded)

    def candidate_ids(self, body: RankRequest) -> Ids:
        """The candidates' ids (the catalog's when the request names none), within the limits."""
        limits = self.limits
        if body.k > limits.max_k:
            raise Unprocessable(f"k: at most {limits.max_k}, got {body.k}")
        if body.candidates is None:
            return self.tables.item_ids  # already a unicode array: no per-request copy
        if len(body.candidates) > limits.max_candidates:
            raise PayloadTooLarge(
                f"candidates: {len(body.candidates)} items, limit {limits.max_candidates}"
            )
        return list(map(str, body.candidates))

    def response(self, candidates: Candidates, scores: np.ndarray, variants: dict[str, str],
                 k: int) -> dict[str, Any]:  # fmt: skip
        """The RankResponse document, as plain values: validating a response the server builds
        itself would cost more than the inference (OpenAPI still documents it)."""
        ids = candidates.ids
        document = {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "variants": variants,
            "user_known": candidates.user_known,
            "unknown_items": candidates.unknown,
            "items": [{"item_id": str(ids[i]), "score": float(scores[i])}
                      for i in top_k(scores, k)],
        }  # fmt: skip
        if candidates.degraded:
            document["degraded"] = list(candidates.degraded)
        return document


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, best first (ties in input order)."""
    k = min(k, len(scores))
    if k == 0:
        return np.empty(0, dtype=np.int64)
    top = np.argpartition(-scores, k - 1)[:k]
    return top[np.argsort(-scores[top], kind="stable")]

"""The recommendation API: rank candidate items for a user, and score raw feature rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, TypeVar

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from app import dependencies
from app.errors import ERROR_RESPONSES, PayloadTooLarge, Unprocessable, json_response
from app.openapi import json_body
from app.serving import Serving
from config import LimitSettings, Settings
from models.feature_tables import CATEGORICAL_INPUT, DENSE_INPUT, OOV_ROW, FeatureTables
from models.repository import Manifest

router = APIRouter(prefix="/v1", tags=["recommendations"], responses=ERROR_RESPONSES)
Ids = Sequence[str] | np.ndarray  # candidate ids: a list, or the catalog's array
Id = Annotated[
    StrictStr | StrictInt, Field(description="a raw id as in the data set; unknown ids are scored")
]
Body = TypeVar("Body", bound=BaseModel)


class RankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    user_id: Id
    candidates: list[Id] | None = Field(
        None, min_length=1, description="item ids to rank; omitted: the whole catalog"
    )
    k: int = Field(10, ge=1)
    exclude_seen: bool = Field(False, description="drop items the user rated in training")


class RankedItem(BaseModel):
    item_id: str
    score: float


class RankResponse(BaseModel):
    model_name: str
    model_version: int
    variants: dict[str, str] = Field(description="device -> variant, for the devices that scored")
    user_known: bool
    unknown_items: list[str] = Field(description="candidates scored through the OOV slot")
    items: list[RankedItem]


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    categorical: list[list[int]] = Field(min_length=1, description="per-field vocabulary indices")
    dense: list[list[float]] = Field(min_length=1, description="dense features (genre bag)")


class ScoreResponse(BaseModel):
    model_name: str
    model_version: int
    variants: dict[str, str]
    scores: list[float]


def parse_body(raw: bytes, model: type[Body], limits: dict[str, int]) -> Body:
    """The JSON body as `model`, its lists named in `limits` counted before any validation (a
    body of two million candidates is refused in the time it takes to parse it)."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Unprocessable(f"body: not valid JSON ({exc})") from None
    if isinstance(document, dict):
        for key, limit in limits.items():
            value = document.get(key)
            if isinstance(value, list) and len(value) > limit:
                raise PayloadTooLarge(f"{key}: {len(value)} items, limit {limit}")
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


async def rank_body(request: Request) -> RankRequest:
    limits: LimitSettings = request.app.state.settings.limits
    return parse_body(await request.body(), RankRequest, {"candidates": limits.max_candidates})


async def score_body(request: Request) -> ScoreRequest:
    limits: LimitSettings = request.app.state.settings.limits
    rows = limits.max_rows_per_request
    return parse_body(await request.body(), ScoreRequest, {"categorical": rows, "dense": rows})


@router.post("/rank", response_model=RankResponse, openapi_extra=json_body(RankRequest))
async def rank(
    body: Annotated[RankRequest, Depends(rank_body)],
    serving: Annotated[Serving, Depends(dependencies.serving)],
    settings: Annotated[Settings, Depends(dependencies.settings)],
    options: Annotated[dependencies.RequestOptions, Depends(dependencies.request_options)],
) -> Response:
    tables = serving.version.tables
    user_row = int(tables.user_rows([str(body.user_id)])[0])
    ids, item_rows, unknown = candidate_rows(body, tables, settings.limits)
    if body.exclude_seen and serving.seen is None:
        raise Unprocessable("exclude_seen: this model version has no table of seen items")
    if body.exclude_seen and serving.seen is not None and user_row != OOV_ROW:
        indptr, seen_rows = serving.seen
        keep = ~np.isin(item_rows, seen_rows[indptr[user_row] : indptr[user_row + 1]])
        ids, item_rows = np.asarray(ids)[keep], item_rows[keep]
    scores = np.empty(0, dtype=np.float32)
    devices: tuple[str, ...] = ()
    if len(item_rows):
        inputs = tables.assemble(np.full(len(item_rows), user_row, dtype=np.int64), item_rows)
        scored = await serving.scheduler.submit(inputs, options.timeout_seconds, options.priority)
        scores, devices = scored.scores, scored.devices
    variants = {d: serving.variants[d].name for d in devices}
    return ranking(serving.version.manifest, variants, user_row, unknown, ids, scores, body.k)


def ranking(manifest: Manifest, variants: dict[str, str], user_row: int, unknown: list[str],
            ids: Ids, scores: np.ndarray, k: int) -> Response:  # fmt: skip
    """The RankResponse body, serialized with orjson directly: validating a response the server
    builds itself would cost more than the inference (the OpenAPI schema still documents it)."""
    return json_response({
        "model_name": manifest.model_name,
        "model_version": manifest.model_version,
        "variants": variants,
        "user_known": user_row != OOV_ROW,
        "unknown_items": unknown,
        "items": [{"item_id": str(ids[i]), "score": float(scores[i])} for i in top_k(scores, k)],
    })  # fmt: skip


def candidate_rows(
    body: RankRequest, tables: FeatureTables, limits: LimitSettings
) -> tuple[Ids, np.ndarray, list[str]]:
    """The candidates' ids, their item rows in the feature tables, and the ids not in the
    catalog (scored through the OOV row)."""
    if body.k > limits.max_k:
        raise Unprocessable(f"k: at most {limits.max_k}, got {body.k}")
    if body.candidates is None:
        catalog = tables.item_ids  # already a unicode array: no per-request copy
        return catalog, np.arange(1, len(catalog) + 1, dtype=np.int64), []
    if len(body.candidates) > limits.max_candidates:
        raise PayloadTooLarge(
            f"candidates: {len(body.candidates)} items, limit {limits.max_candidates}"
        )
    ids = list(map(str, body.candidates))
    item_rows = tables.item_rows(ids)
    unknown = [ids[i] for i in np.flatnonzero(item_rows == OOV_ROW)]
    return ids, item_rows, unknown


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, best first (ties in input order)."""
    k = min(k, len(scores))
    if k == 0:
        return np.empty(0, dtype=np.int64)
    top = np.argpartition(-scores, k - 1)[:k]
    return top[np.argsort(-scores[top], kind="stable")]


@router.post("/score", openapi_extra=json_body(ScoreRequest))
async def score(
    body: Annotated[ScoreRequest, Depends(score_body)],
    serving: Annotated[Serving, Depends(dependencies.serving)],
    settings: Annotated[Settings, Depends(dependencies.settings)],
    options: Annotated[dependencies.RequestOptions, Depends(dependencies.request_options)],
) -> ScoreResponse:
    rows = len(body.categorical)
    if rows > settings.limits.max_rows_per_request:
        raise PayloadTooLarge(
            f"categorical: {rows} rows, limit {settings.limits.max_rows_per_request}"
        )
    if len(body.dense) != rows:
        raise Unprocessable(f"dense: {len(body.dense)} rows, categorical has {rows}")
    manifest = serving.version.manifest
    inputs = {
        CATEGORICAL_INPUT: to_array(
            body.categorical, np.int64, len(manifest.categorical_fields), CATEGORICAL_INPUT
        ),
        DENSE_INPUT: to_array(body.dense, np.float32, len(manifest.dense_fields), DENSE_INPUT),
    }
    check_inputs(inputs, serving)
    scored = await serving.scheduler.submit(inputs, options.timeout_seconds, options.priority)
    return ScoreResponse(
        model_name=manifest.model_name,
        model_version=manifest.model_version,
        variants={d: serving.variants[d].name for d in scored.devices},
        scores=scored.scores.astype(float).tolist(),
    )


def to_array(rows: Sequence[Sequence[float]], dtype: type, width: int, name: str) -> np.ndarray:
    for index, row in enumerate(rows):
        if len(row) != width:
            raise Unprocessable(f"{name}: row {index} has {len(row)} values, expected {width}")
    try:
        return np.asarray(rows, dtype=dtype)
    except OverflowError:
        raise Unprocessable(f"{name}: a value outside the range of {np.dtype(dtype)}") from None


def check_inputs(inputs: dict[str, np.ndarray], serving: Serving) -> None:
    """Indices within each field's vocabulary, dense values finite (no NaN or infinity)."""
    manifest = serving.version.manifest
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

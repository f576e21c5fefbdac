"""The recommendation API: rank candidate items for a user, and score raw feature rows."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Annotated, TypeVar

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from app import dependencies
from app.errors import ERROR_RESPONSES, PayloadTooLarge, Unprocessable, json_response
from app.openapi import json_body
from app.serving import example_inputs
from app.settings import LimitSettings
from app.v1_schema import RankRequest, RankResponse, ScoreRequest, ScoreResponse
from config.settings import Settings
from models.feature_tables import CATEGORICAL_INPUT, DENSE_INPUT
from models.repository import Manifest

router = APIRouter(prefix="/v1", tags=["recommendations"], responses=ERROR_RESPONSES)
Body = TypeVar("Body", bound=BaseModel)


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
    ranking: Annotated[dependencies.Ranking, Depends(dependencies.ranking)],
    options: Annotated[dependencies.RequestOptions, Depends(dependencies.request_options)],
) -> Response:
    ranker, serving = ranking.ranker, ranking.serving
    candidates = ranker.candidates(body)
    scores = np.empty(0, dtype=np.float32)
    devices: tuple[str, ...] = ()
    if candidates.inputs is not None:
        scored = await serving.scheduler.submit(
            candidates.inputs, options.timeout_seconds, options.priority
        )
        scores, devices = scored.outputs[ranker.assembler.score_output], scored.devices
    variants = {d: serving.variants[d].name for d in devices}
    return ranker.response(candidates, scores, variants, body.k)


@router.post("/score", openapi_extra=json_body(ScoreRequest))
async def score(
    body: Annotated[ScoreRequest, Depends(score_body)],
    ranking: Annotated[dependencies.Ranking, Depends(dependencies.ranking)],
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
    manifest, serving = ranking.require_built("/v1/score").manifest, ranking.serving
    inputs = {
        CATEGORICAL_INPUT: to_array(
            body.categorical, np.int64, len(manifest.categorical_fields), CATEGORICAL_INPUT
        ),
        DENSE_INPUT: to_array(body.dense, np.float32, len(manifest.dense_fields), DENSE_INPUT),
    }
    check_inputs(inputs, manifest)
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


def check_inputs(inputs: dict[str, np.ndarray], manifest: Manifest) -> None:
    """Indices within each field's vocabulary, dense values finite (no NaN or infinity)."""
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


@router.get("/examples", tags=["load testing"])
async def examples(
    ranking: Annotated[dependencies.Ranking, Depends(dependencies.ranking)],
    settings: Annotated[Settings, Depends(dependencies.settings)],
    ids: Annotated[int, Query(ge=0, le=100_000, description="user and item ids, each")] = 1000,
    rows: Annotated[int, Query(ge=1, description="feature rows (held-out test pairs)")] = 64,
) -> Response:
    """What a load generator on another machine needs: known user and item ids (the first
    `ids` of each) for /v1/rank, and real feature rows for /v1/score and V2 infer bodies."""
    limit = settings.limits.max_rows_per_request
    if rows > limit:
        raise Unprocessable(f"rows: at most {limit}, got {rows}")
    version = ranking.require_built("/v1/examples")
    sample = await asyncio.to_thread(example_inputs, version, rows)
    return json_response({
        "model_name": version.manifest.model_name,
        "model_version": version.manifest.model_version,
        "user_ids": [str(u) for u in version.tables.user_ids[:ids]],
        "item_ids": [str(i) for i in version.tables.item_ids[:ids]],
        "inputs": {name: array.tolist() for name, array in sample.items()},
    })  # fmt: skip

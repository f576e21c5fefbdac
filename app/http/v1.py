"""The recommendation API over REST: rank candidate items for a user, score raw feature rows,
and the examples a load generator starts from. Parsing and rendering only: the data plane ranks."""

from __future__ import annotations

from typing import Annotated, TypeVar

import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from app.dataplane.errors import PayloadTooLarge, Unprocessable
from app.dataplane.plane import DataPlane
from app.dataplane.schemas import RankRequest, RankResponse, ScoreRequest, ScoreResponse
from app.http.dependencies import Headers, asked, plane
from app.http.errors import ERROR_RESPONSES, json_response
from app.http.openapi import json_body

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


@router.post("/rank", response_model=RankResponse, openapi_extra=json_body(RankRequest))
async def rank(request: Request) -> Response:
    body = await rank_body(plane(request), await request.body(), request.headers.raw)
    return Response(body, media_type="application/json")


async def rank_body(served: DataPlane, body: bytes, headers: Headers) -> bytes:
    """A /v1/rank body ranked: the RankResponse as JSON. FastAPI's route and the hot path
    (`app.http.hot`) both answer with it."""
    limits = {"candidates": served.settings.limits.max_candidates}
    parsed = parse_body(body, RankRequest, limits)
    options = asked(headers)
    return orjson.dumps(await served.rank(parsed, options.timeout_ms, options.priority))


@router.post("/score", response_model=ScoreResponse, openapi_extra=json_body(ScoreRequest))
async def score(request: Request) -> Response:
    served = plane(request)
    rows = served.settings.limits.max_rows_per_request
    body = parse_body(await request.body(), ScoreRequest, {"categorical": rows, "dense": rows})
    options = asked(request.headers.raw)
    return json_response(await served.score_rows(body, options.timeout_ms, options.priority))


@router.get("/examples", tags=["load testing"])
async def examples(
    request: Request,
    ids: Annotated[int, Query(ge=0, le=100_000, description="user and item ids, each")] = 1000,
    rows: Annotated[int, Query(ge=1, description="feature rows (held-out test pairs)")] = 64,
) -> Response:
    """Known user and item ids for /v1/rank, and real feature rows for /v1/score and V2 infer."""
    return json_response(await plane(request).examples(ids, rows))

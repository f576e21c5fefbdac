"""The model repository extension of the V2 protocol, as Triton and tritonclient implement it:
the index, and load and unload of a model (explicit model-control mode only, as Triton's)."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request, Response
from pydantic import ValidationError

from app.http.dependencies import bearer, plane
from app.http.errors import ERROR_RESPONSES, json_response
from app.settings import CanarySplit
from scheduler.errors import InvalidInput

router = APIRouter(prefix="/v2/repository", tags=["KServe V2 model repository"],
                   responses=ERROR_RESPONSES)  # fmt: skip
MAX_BODY = 64 * 1024


async def options(request: Request) -> dict[str, Any]:
    """The optional JSON body: `{"ready": bool}` for the index, `{"parameters": {...}}` for a
    load or unload; the parameters that would replace the model's config or files are refused."""
    raw = await request.body()
    if not raw.strip():
        return {}
    if len(raw) > MAX_BODY:
        raise InvalidInput(f"body: {len(raw)} bytes, at most {MAX_BODY} here")
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body: not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise InvalidInput("body: a JSON object is required")
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("parameters: a JSON object is required")
    for key in parameters:
        if key == "config" or str(key).startswith("file:"):
            raise InvalidInput(
                f"parameters.{str(key)[:64]}: not supported here; edit the model's folder "
                "(config.toml, version folders) and load it again"
            )
    return document


@router.post("/index")
async def index(request: Request, body: Annotated[dict[str, Any], Depends(options)]) -> Response:
    """Every model in the repository or loaded, by version, with its state and reason."""
    return json_response(plane(request).index(ready_only=body.get("ready") is True))


@router.post("/models/{name}/load")
async def load(
    request: Request, name: str, body: Annotated[dict[str, Any], Depends(options)]
) -> Response:
    """(Re)load the model from its folder; answers once its versions serve (200), or with the
    reason it could not (400), what served before still serving. With `[faults] admin_token`
    set, it needs that token (Authorization: Bearer)."""
    del body
    await plane(request).load_model(name, bearer(request))
    return json_response({})


@router.get("/models/{name}/canary")
async def canary(request: Request, name: str) -> Response:
    """The model's canary split (`[canary]`, as changed since start-up) and its versions."""
    return json_response(plane(request).canary(name))


@router.post("/models/{name}/canary")
async def set_canary(request: Request, name: str) -> Response:
    """`{"version": 2, "share": 0.1}`: the canary version takes that share of keyed requests;
    `{"version": 2, "promoted": true}`: every request; with `[faults] admin_token` set, it needs
    that token. Logged; not kept on restart (`[canary] splits` is)."""
    document = await options(request)
    try:
        split = CanarySplit.model_validate(document)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in first["loc"]) or "body"
        raise InvalidInput(f"{field}: {first['msg']}") from None
    return json_response(plane(request).set_canary(name, split, bearer(request)))


@router.delete("/models/{name}/canary")
async def remove_canary(request: Request, name: str) -> Response:
    """Remove the split: a request that names no version goes to the latest ready one, as
    with no canary (to roll back, set the share to 0 instead)."""
    return json_response(plane(request).set_canary(name, None, bearer(request)))


@router.post("/models/{name}/unload")
async def unload(
    request: Request, name: str, body: Annotated[dict[str, Any], Depends(options)]
) -> Response:
    """Stop serving the model; requests already queued on it finish first."""
    del body
    await plane(request).unload_model(name, bearer(request))
    return json_response({})

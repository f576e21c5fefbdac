"""The KServe V2 / Open Inference Protocol over REST, with Triton's binary-tensor extension, so
clients written for Triton, KServe, MLServer or OpenVINO Model Server work unchanged."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from app.dataplane import documents
from app.dataplane.admission import numbered_priority
from app.dataplane.plane import DataPlane
from app.http.dependencies import plane
from app.http.errors import ERROR_RESPONSES, json_response
from app.http.openapi import inline_schema
from app.http.v2_codec import (
    HEADER_LENGTH,
    binary_outputs,
    decode_inputs,
    encode_response,
    parse_request,
)
from app.http.v2_schema import InferenceRequest, RequestParameters

router = APIRouter(prefix="/v2", tags=["KServe V2"], responses=ERROR_RESPONSES)
# The version is read from the path; documented here for the versioned routes.
VERSIONED: dict[str, Any] = {
    "parameters": [
        {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
}
INFER: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": inline_schema(InferenceRequest)},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "binary tensor extension: the JSON header "
                "(Inference-Header-Content-Length bytes), then the raw tensors",
            },
        },
    }
}
VERSIONED_INFER = {**VERSIONED, **INFER}


def version_of(request: Request) -> str | None:
    version: str | None = request.path_params.get("version")
    return version


@router.get("")
async def server_metadata() -> dict[str, Any]:
    return documents.server_metadata()


@router.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready")
async def ready(request: Request) -> Response:
    """Ready: the start-up models loaded, every loaded model with a ready version on a healthy
    device, none saturated, not draining."""
    is_ready = plane(request).ready()
    return json_response({"ready": is_ready}, status=200 if is_ready else 503)


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}", openapi_extra=VERSIONED)
async def model_metadata(request: Request, name: str) -> dict[str, Any]:
    return plane(request).metadata(name, version_of(request))


@router.get("/models/{name}/ready")
@router.get("/models/{name}/versions/{version}/ready", openapi_extra=VERSIONED)
async def model_ready(request: Request, name: str) -> Response:
    is_ready = plane(request).model_ready(name, version_of(request))
    return json_response({"name": name, "ready": is_ready}, status=200 if is_ready else 503)


@router.get("/models/{name}/config")
@router.get("/models/{name}/versions/{version}/config", openapi_extra=VERSIONED)
async def model_config(request: Request, name: str) -> dict[str, Any]:
    """Triton's model configuration, as completed from the graph and the model's config.toml;
    `max_batch_size` 0 says the model is served without batching."""
    return plane(request).config(name, version_of(request))


@router.get("/models/{name}/stats")
@router.get("/models/{name}/versions/{version}/stats", openapi_extra=VERSIONED)
async def model_stats(request: Request, name: str) -> dict[str, Any]:
    return plane(request).statistics(name, version_of(request))


@router.get("/models/{name}/shadow")
@router.get("/models/{name}/versions/{version}/shadow", openapi_extra=VERSIONED)
async def model_shadow(request: Request, name: str) -> dict[str, Any]:
    """How a shadow candidate's scores agree with the ones served ([shadow] in the settings)."""
    return plane(request).shadow(name, version_of(request))


@router.post("/models/{name}/infer", openapi_extra=INFER)
@router.post("/models/{name}/versions/{version}/infer", openapi_extra=VERSIONED_INFER)
async def infer(request: Request, name: str) -> Response:
    body, json_length = await infer_body(plane(request), name, version_of(request),
                                         await request.body(),
                                         request.headers.get(HEADER_LENGTH))  # fmt: skip
    if json_length is None:
        return Response(body, media_type="application/json")
    return Response(
        body,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(json_length)},
    )


async def infer_body(served: DataPlane, name: str, version: str | None, body: bytes,
                     header_length: str | None) -> tuple[bytes, int | None]:  # fmt: skip
    """A V2 infer request's body scored: the response body and, when any output is binary, its
    JSON header's length. FastAPI's route and the hot path (`app.http.hot`) both answer with it."""
    outputs = served.model(name, version).version.signature.output_names  # 404 whatever the body
    parsed, tail = parse_request(body, header_length)
    binary = binary_outputs(parsed, outputs)
    parameters = parsed.parameters or RequestParameters()
    timeout_ms = None if parameters.timeout is None else parameters.timeout / 1000
    priority = numbered_priority(parameters.priority, "parameters.priority")
    asked = [spec.name for spec in parsed.outputs or ()]
    inferred = await served.infer(name, version, decode_inputs(parsed, tail), asked, timeout_ms,
                                  priority, parameters.routing_key)  # fmt: skip
    header: dict[str, Any] = {"model_name": name,
                              "model_version": str(inferred.serving.version.number)}  # fmt: skip
    if parsed.id is not None:
        header["id"] = parsed.id
    return encode_response(header, inferred.outputs, binary)

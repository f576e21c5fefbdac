"""The KServe V2 / Open Inference Protocol over REST, with Triton's binary-tensor extension, so
clients written for Triton, KServe, MLServer or OpenVINO Model Server work unchanged."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from app import dependencies
from app.admission import v2_priority
from app.dependencies import effective_timeout
from app.errors import ERROR_RESPONSES, json_response
from app.openapi import inline_schema
from app.serving import Serving
from app.v1 import check_inputs
from app.v2_codec import (
    HEADER_LENGTH,
    binary_outputs,
    check_against,
    decode_inputs,
    encode_response,
    parse_request,
)
from app.v2_schema import InferenceRequest, RequestParameters
from config.settings import Settings
from scheduler.errors import NotReady, UnknownModel

router = APIRouter(prefix="/v2", tags=["KServe V2"], responses=ERROR_RESPONSES)
# The version is read from the path by model_of; documented here for the versioned routes.
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
SERVER_NAME = "recsys-serve"
SERVER_VERSION = "0.1.0"
TRITON_TYPES = {"INT64": "TYPE_INT64", "FP32": "TYPE_FP32"}


def model_of(request: Request, name: str) -> Serving:
    """The model a route names, at the version its path names (none: the one served)."""
    version: str | None = request.path_params.get("version")
    state: Serving | None = request.app.state.serving
    if state is None:
        raise NotReady("the model is not loaded yet")
    manifest = state.version.manifest
    if name != manifest.model_name:
        raise UnknownModel(f"model {name!r} is not served here (serving {manifest.model_name!r})")
    if version is not None and version != str(manifest.model_version):
        raise UnknownModel(f"model {name!r} has no version {version!r}")
    return state


@router.get("")
async def server_metadata() -> dict[str, Any]:
    return {
        "name": SERVER_NAME,
        "version": SERVER_VERSION,
        "extensions": ["binary_tensor_data", "statistics"],
    }


@router.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready")
async def ready(request: Request) -> Response:
    state: Serving | None = request.app.state.serving
    is_ready = (
        state is not None
        and state.ready
        and state.scheduler.running
        and any(d.healthy for d in state.scheduler.devices)
        and not request.app.state.draining
        and not state.scheduler.load().saturated
    )
    return json_response({"ready": is_ready}, status=200 if is_ready else 503)


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}", openapi_extra=VERSIONED)
async def model_metadata(request: Request, name: str) -> dict[str, Any]:
    manifest = model_of(request, name).version.manifest
    return {
        "name": manifest.model_name,
        "versions": [str(manifest.model_version)],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": i.name, "datatype": i.datatype, "shape": list(i.shape)}
            for i in manifest.inputs
        ],
        "outputs": [
            {"name": o.name, "datatype": o.datatype, "shape": list(o.shape)}
            for o in manifest.outputs
        ],
    }


@router.get("/models/{name}/ready")
@router.get("/models/{name}/versions/{version}/ready", openapi_extra=VERSIONED)
async def model_ready(request: Request, name: str) -> Response:
    state = model_of(request, name)
    return json_response({"name": name, "ready": state.ready}, status=200 if state.ready else 503)


@router.get("/models/{name}/config")
async def model_config(
    request: Request, name: str, settings: Annotated[Settings, Depends(dependencies.settings)]
) -> dict[str, Any]:
    manifest = model_of(request, name).version.manifest
    return {
        "name": manifest.model_name,
        "max_batch_size": settings.limits.max_rows_per_request,
        "input": [
            {"name": i.name, "data_type": TRITON_TYPES[i.datatype], "dims": list(i.shape[1:])}
            for i in manifest.inputs
        ],
        "output": [
            {"name": o.name, "data_type": TRITON_TYPES[o.datatype], "dims": list(o.shape[1:])}
            for o in manifest.outputs
        ],
        "dynamic_batching": {
            "max_queue_delay_microseconds": int(settings.batching.max_queue_delay_ms * 1000)
        },
    }


@router.get("/models/{name}/stats")
@router.get("/models/{name}/versions/{version}/stats", openapi_extra=VERSIONED)
async def model_stats(request: Request, name: str) -> dict[str, Any]:
    state = model_of(request, name)
    s = state.stats
    return {
        "model_stats": [
            {
                "name": name,
                "version": str(state.version.manifest.model_version),
                "inference_count": int(s.get("rows", 0)),
                "execution_count": int(s.get("requests", 0)),
                "inference_stats": {
                    "success": {
                        "count": int(s.get("requests", 0)),
                        "ns": int(s.get("total_ns", 0)),
                    },
                    "fail": {"count": int(s.get("failures", 0)), "ns": 0},
                    "queue": {"count": int(s.get("requests", 0)), "ns": int(s.get("queue_ns", 0))},
                    "compute_infer": {
                        "count": int(s.get("requests", 0)),
                        "ns": int(s.get("compute_ns", 0)),
                    },
                },
            }
        ]
    }


def v2_options(request: InferenceRequest, settings: Settings) -> tuple[float, int]:
    """Triton's request parameters: `timeout` in microseconds, `priority` 1 highest (0: default)."""
    parameters = request.parameters or RequestParameters()
    level = v2_priority(parameters.priority, settings.admission.default_priority)
    asked_ms = None if parameters.timeout is None else parameters.timeout / 1000
    return effective_timeout(settings, asked_ms), level


@router.post("/models/{name}/infer", openapi_extra=INFER)
@router.post("/models/{name}/versions/{version}/infer", openapi_extra=VERSIONED_INFER)
async def infer(
    request: Request,
    name: str,
    serving: Annotated[Serving, Depends(dependencies.serving)],
    settings: Annotated[Settings, Depends(dependencies.settings)],
) -> Response:
    started = time.perf_counter()
    model_of(request, name)
    manifest = serving.version.manifest
    parsed, tail = parse_request(await request.body(), request.headers.get(HEADER_LENGTH))
    specs = {i.name: (i.datatype, i.shape) for i in manifest.inputs}
    inputs = check_against(decode_inputs(parsed, tail), specs, settings.limits.max_rows_per_request)
    check_inputs(inputs, serving)
    binary = binary_outputs(parsed, [o.name for o in manifest.outputs])
    timeout_seconds, priority = v2_options(parsed, settings)
    try:
        scored = await serving.scheduler.submit(inputs, timeout_seconds, priority)
    except Exception:
        serving.stats["failures"] = serving.stats.get("failures", 0) + 1
        raise
    response_header: dict[str, Any] = {
        "model_name": manifest.model_name,
        "model_version": str(manifest.model_version),
    }
    if parsed.id is not None:
        response_header["id"] = parsed.id
    body, json_length = encode_response(
        response_header, {manifest.outputs[0].name: scored.scores}, binary
    )
    s = serving.stats
    s["requests"] = s.get("requests", 0) + 1
    s["rows"] = s.get("rows", 0) + len(scored.scores)
    s["queue_ns"] = s.get("queue_ns", 0) + scored.queue_seconds * 1e9
    s["compute_ns"] = s.get("compute_ns", 0) + scored.compute_seconds * 1e9
    s["total_ns"] = s.get("total_ns", 0) + (time.perf_counter() - started) * 1e9
    if json_length is None:
        return Response(body, media_type="application/json")
    return Response(
        body,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(json_length)},
    )

"""The KServe V2 / Open Inference Protocol over REST, with Triton's binary-tensor extension, so
clients written for Triton, KServe, MLServer or OpenVINO Model Server work unchanged."""

from __future__ import annotations

import time
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request, Response

from app import dependencies
from app.admission import v2_priority
from app.dependencies import effective_timeout, model_defaults
from app.errors import ERROR_RESPONSES, json_response
from app.openapi import inline_schema
from app.registry import ModelRegistry
from app.serving import DEVICE_KIND_OF_BACKEND, Serving, inference_threads, runtime_cores
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
from scheduler.errors import InvalidInput, NotReady

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
PLATFORMS = {"onnx": "onnxruntime_onnx", "openvino-ir": "openvino"}


def registry(request: Request) -> ModelRegistry:
    if not request.app.state.started:
        raise NotReady("the models are not loaded yet")
    models: ModelRegistry = request.app.state.models
    return models


def model_of(request: Request, name: str) -> Serving:
    """The model a route names, at the version its path names (none: the latest ready one)."""
    return registry(request).get(name, request.path_params.get("version"))


@router.get("")
async def server_metadata() -> dict[str, Any]:
    return {
        "name": SERVER_NAME,
        "version": SERVER_VERSION,
        "extensions": ["binary_tensor_data", "statistics", "model_repository"],
    }


@router.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready")
async def ready(request: Request) -> Response:
    """Ready: the start-up models loaded, every loaded model with a ready version on a healthy
    device, none saturated, not draining."""
    app = request.app
    is_ready = app.state.started and not app.state.draining and app.state.models.ready()
    return json_response({"ready": is_ready}, status=200 if is_ready else 503)


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}", openapi_extra=VERSIONED)
async def model_metadata(request: Request, name: str) -> dict[str, Any]:
    return metadata_document(model_of(request, name), registry(request))


def metadata_document(serving: Serving, models: ModelRegistry) -> dict[str, Any]:
    name = serving.version.model
    version = serving.version
    served = models.models[name].versions
    return {
        "name": name,
        "versions": [str(n) for n in sorted(served)],
        "platform": PLATFORMS[next(iter(serving.variants.values())).format],
        "inputs": [
            {"name": i.name, "datatype": i.datatype, "shape": list(i.shape)}
            for i in version.signature.inputs
        ],
        "outputs": [
            {"name": o.name, "datatype": o.datatype, "shape": list(o.shape)}
            for o in version.signature.outputs
        ],
    }


@router.get("/models/{name}/ready")
@router.get("/models/{name}/versions/{version}/ready", openapi_extra=VERSIONED)
async def model_ready(request: Request, name: str) -> Response:
    state = model_of(request, name)
    return json_response({"name": name, "ready": state.ready}, status=200 if state.ready else 503)


@router.get("/models/{name}/config")
@router.get("/models/{name}/versions/{version}/config", openapi_extra=VERSIONED)
async def model_config(
    request: Request, name: str, settings: Annotated[Settings, Depends(dependencies.settings)]
) -> dict[str, Any]:
    """Triton's model configuration, as completed from the graph and the model's config.toml;
    `max_batch_size` 0 says the model is served without batching."""
    return config_document(model_of(request, name), settings)


def config_document(serving: Serving, settings: Settings) -> dict[str, Any]:
    """The model configuration in Triton's JSON form (REST returns it; gRPC converts it)."""
    name = serving.version.model
    version = serving.version
    batching = serving.scheduler.batching
    inner = slice(1, None) if version.batched else slice(None)
    config: dict[str, Any] = {
        "name": name,
        "platform": PLATFORMS[next(iter(serving.variants.values())).format],
        "max_batch_size": batching.max_batch_rows if version.batched else 0,
        "input": [
            {"name": i.name, "data_type": f"TYPE_{i.datatype}", "dims": list(i.shape[inner])}
            for i in version.signature.inputs
        ],
        "output": [
            {"name": o.name, "data_type": f"TYPE_{o.datatype}", "dims": list(o.shape[inner])}
            for o in version.signature.outputs
        ],
        "instance_group": [
            {
                "name": device.name,
                "kind": f"KIND_{DEVICE_KIND_OF_BACKEND[config.backend].upper()}",
                "count": device.parallel_batches,
                "variant": serving.variants[device.name].name,
                "variant_reason": serving.reasons.get(device.name, ""),
                "backend": serving.backends.get(device.name, config.backend),
                "threads": inference_threads(config, settings.devices, runtime_cores(settings)),
            }
            for device in serving.scheduler.devices
            for config in settings.devices
            if config.name == device.name
        ],
    }
    if version.batched:
        delay = int(batching.max_queue_delay_seconds * 1e6)
        config["dynamic_batching"] = {"max_queue_delay_microseconds": delay}
    return config


@router.get("/models/{name}/stats")
@router.get("/models/{name}/versions/{version}/stats", openapi_extra=VERSIONED)
async def model_stats(request: Request, name: str) -> dict[str, Any]:
    return stats_document(model_of(request, name))


def stats_document(state: Serving) -> dict[str, Any]:
    """Triton's statistics of one model version, in its JSON form."""
    name = state.version.model
    s = state.stats
    return {
        "model_stats": [
            {
                "name": name,
                "version": str(state.version.number),
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


def v2_options(request: InferenceRequest, settings: Settings, serving: Serving,
               ) -> tuple[float, int]:  # fmt: skip
    """Triton's request parameters: `timeout` in microseconds, `priority` 1 highest (0: the
    default); the model's config.toml may set its own defaults."""
    parameters = request.parameters or RequestParameters()
    default_ms, default_priority = model_defaults(settings, serving.version.config)
    level = v2_priority(parameters.priority, default_priority)
    asked_ms = None if parameters.timeout is None else parameters.timeout / 1000
    return effective_timeout(default_ms, asked_ms), level


def requested_outputs(request: InferenceRequest, output_names: list[str]) -> list[str]:
    """The outputs a request asks for, in its order; all of them when it names none."""
    if not request.outputs:
        return output_names
    names = [spec.name for spec in request.outputs]
    if len(set(names)) != len(names):
        raise InvalidInput("outputs: an output is named twice")
    return names  # unknown names are refused by binary_outputs


async def score(
    serving: Serving, tensors: dict[str, np.ndarray], wanted: list[str], settings: Settings,
    timeout_seconds: float, priority: int, started: float,
) -> dict[str, np.ndarray]:  # fmt: skip
    """A V2 request's decoded tensors through the scheduler, whatever the transport (REST or
    gRPC): checked against the model's inputs, scored, the `wanted` outputs returned and the
    model's statistics kept. No await before the submit: the caller looked `serving` up last."""
    version = serving.version
    specs = {i.name: (i.datatype, i.shape) for i in version.signature.inputs}
    batched = version.batched
    inputs = check_against(tensors, specs, settings.limits.max_rows_per_request, batched)
    if serving.built is not None:
        check_inputs(inputs, serving.built.manifest)
    if not batched:  # the scheduler's batch axis, of one row; the backend takes it off
        inputs = {key: array[np.newaxis] for key, array in inputs.items()}
    try:
        scored = await serving.scheduler.submit(inputs, timeout_seconds, priority)
    except Exception:
        serving.stats["failures"] = serving.stats.get("failures", 0) + 1
        raise
    outputs = {key: scored.outputs[key] if batched else scored.outputs[key][0] for key in wanted}
    s = serving.stats
    s["requests"] = s.get("requests", 0) + 1
    s["rows"] = s.get("rows", 0) + (len(next(iter(inputs.values()))) if batched else 1)
    s["queue_ns"] = s.get("queue_ns", 0) + scored.queue_seconds * 1e9
    s["compute_ns"] = s.get("compute_ns", 0) + scored.compute_seconds * 1e9
    s["total_ns"] = s.get("total_ns", 0) + (time.perf_counter() - started) * 1e9
    return outputs


@router.post("/models/{name}/infer", openapi_extra=INFER)
@router.post("/models/{name}/versions/{version}/infer", openapi_extra=VERSIONED_INFER)
async def infer(
    request: Request, name: str, settings: Annotated[Settings, Depends(dependencies.settings)]
) -> Response:
    started = time.perf_counter()
    model_of(request, name)  # an unknown model is a 404 whatever the body
    parsed, tail = parse_request(await request.body(), request.headers.get(HEADER_LENGTH))
    # Looked up again with no await from here to the submit: a version swapped out meanwhile
    # is never submitted to.
    serving = model_of(request, name)
    dependencies.check_accepting(request)
    if not serving.ready:
        raise NotReady(f"model {name!r} is not ready")
    version = serving.version
    output_names = [o.name for o in version.signature.outputs]
    binary = binary_outputs(parsed, output_names)
    wanted = requested_outputs(parsed, output_names)
    timeout_seconds, priority = v2_options(parsed, settings, serving)
    outputs = await score(serving, decode_inputs(parsed, tail), wanted, settings, timeout_seconds,
                          priority, started)  # fmt: skip
    response_header: dict[str, Any] = {"model_name": name, "model_version": str(version.number)}
    if parsed.id is not None:
        response_header["id"] = parsed.id
    body, json_length = encode_response(response_header, outputs, binary)
    if json_length is None:
        return Response(body, media_type="application/json")
    return Response(
        body,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(json_length)},
    )

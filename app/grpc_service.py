"""The KServe V2 inference protocol over gRPC: `inference.GRPCInferenceService` as Triton serves
it and `tritonclient.grpc` calls it (the service definition is Triton's own, generated in
tritonclient), on `[grpc] port`, in the REST server's process and event loop.

Every call goes the way of its REST twin: the same registry of models and versions, the same
admission (one count of requests in progress for both transports, refusals before any decoding),
draining, deadlines (the call's gRPC deadline or its `timeout` parameter in microseconds, never
past the model's default), `priority` (1 highest, 2 or more low), and `app.v2.score` into the
scheduler. Tensors arrive as `raw_input_contents` or typed `contents`; outputs leave as
`raw_output_contents`. Errors carry the gRPC code of their HTTP status and the same message.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable
from http import HTTPStatus
from typing import Any, TypeVar

import grpc
import numpy as np
from fastapi import FastAPI
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as config_pb
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as rpc

from app import v2
from app.admission import Decision, v2_priority
from app.dependencies import effective_timeout, model_defaults
from app.registry import ModelRegistry
from app.serving import Serving
from app.v2_codec import DTYPES
from config.settings import Settings
from models.signature import V2_DATATYPES
from scheduler.errors import InvalidInput, NotReady, ServingError

log = logging.getLogger(__name__)
Response = TypeVar("Response")
CODES = {
    HTTPStatus.BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    HTTPStatus.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
    HTTPStatus.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: grpc.StatusCode.INVALID_ARGUMENT,
    HTTPStatus.UNPROCESSABLE_ENTITY: grpc.StatusCode.INVALID_ARGUMENT,
    HTTPStatus.TOO_MANY_REQUESTS: grpc.StatusCode.UNAVAILABLE,
    HTTPStatus.SERVICE_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    HTTPStatus.GATEWAY_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# Typed contents: the field each V2 datatype's values travel in (FP16 has none: raw only).
CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
}  # fmt: skip


async def answered(context: grpc.aio.ServicerContext, call: Awaitable[Response]) -> Response:
    """The call's response, or its error as the gRPC status of its HTTP status."""
    try:
        return await call
    except ServingError as exc:
        await context.abort(CODES.get(exc.status, grpc.StatusCode.INTERNAL), str(exc))
    except Exception:
        log.exception("gRPC call failed")
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")
    raise AssertionError("unreachable: abort raises")


def decode(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    """The request's tensors by name, from raw_input_contents (all inputs) or typed contents."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents: {len(raw)} buffers for {len(request.inputs)} inputs"
        )
    tensors: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        where = f"inputs.{tensor.name}"
        if tensor.name in tensors:
            raise InvalidInput(f"{where}: named twice")
        dtype = DTYPES.get(tensor.datatype)
        if dtype is None:
            raise InvalidInput(f"{where}.datatype: {tensor.datatype!r} is not served here")
        shape = tuple(tensor.shape)
        if any(d < 0 for d in shape):
            raise InvalidInput(f"{where}.shape: {list(shape)} has a negative dimension")
        count = math.prod(shape)
        if raw:
            buffer = raw[index]
            if len(buffer) != count * dtype.itemsize:
                raise InvalidInput(
                    f"{where}: {len(buffer)} bytes of raw contents for shape {list(shape)} of "
                    f"{tensor.datatype} ({count * dtype.itemsize} bytes)"
                )
            tensors[tensor.name] = np.frombuffer(buffer, dtype).reshape(shape)
            continue
        field = CONTENTS.get(tensor.datatype)
        if field is None:
            raise InvalidInput(f"{where}: {tensor.datatype} travels in raw_input_contents only")
        values = getattr(tensor.contents, field)
        if len(values) != count:
            raise InvalidInput(
                f"{where}.contents: {len(values)} values for shape {list(shape)} ({count})"
            )
        try:
            tensors[tensor.name] = np.asarray(values, dtype=dtype).reshape(shape)
        except OverflowError:
            raise InvalidInput(
                f"{where}.contents: values out of {tensor.datatype}'s range"
            ) from None
    return tensors


def requested_priority(request: pb.ModelInferRequest) -> int:
    """Triton's `priority` parameter: 1 highest, 2 or more low, 0 (or none) the default."""
    parameters = request.parameters
    return int(parameters["priority"].int64_param) if "priority" in parameters else 0


def call_options(request: pb.ModelInferRequest, context: grpc.aio.ServicerContext,
                 settings: Settings, serving: Serving) -> tuple[float, int]:  # fmt: skip
    """Deadline (seconds) and priority of a call: the `timeout` parameter (microseconds) or the
    call's gRPC deadline, whichever is sooner, never past the model's default."""
    parameters = request.parameters
    default_ms, default_priority = model_defaults(settings, serving.version.config)
    asked = []
    if "timeout" in parameters:
        asked.append(parameters["timeout"].int64_param / 1000)
    remaining = context.time_remaining()
    if remaining is not None:
        asked.append(remaining * 1000)
    level = v2_priority(requested_priority(request), default_priority)
    return effective_timeout(default_ms, min(asked) if asked else None), level


class InferenceService(rpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """The service's calls; each looks the app's state up as the REST routes do."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.settings: Settings = app.state.settings

    def models(self) -> ModelRegistry:
        if not self.app.state.started:
            raise NotReady("the models are not loaded yet")
        models: ModelRegistry = self.app.state.models
        return models

    def serving(self, name: str, version: str) -> Serving:
        return self.models().get(name, version or None)

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        state = self.app.state
        return pb.ServerReadyResponse(
            ready=bool(state.started and not state.draining and state.models.ready())
        )

    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        async def call() -> pb.ModelReadyResponse:
            return pb.ModelReadyResponse(ready=self.serving(request.name, request.version).ready)

        return await answered(context, call())

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=v2.SERVER_NAME, version=v2.SERVER_VERSION,
            extensions=["binary_tensor_data", "statistics", "model_repository"],
        )  # fmt: skip

    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        async def call() -> pb.ModelMetadataResponse:
            serving = self.serving(request.name, request.version)
            document = v2.metadata_document(serving, self.models())
            return json_format.ParseDict(document, pb.ModelMetadataResponse())

        return await answered(context, call())

    async def ModelConfig(self, request: Any, context: Any) -> pb.ModelConfigResponse:
        async def call() -> pb.ModelConfigResponse:
            document = v2.config_document(self.serving(request.name, request.version),
                                          self.settings)  # fmt: skip
            config = json_format.ParseDict(document, config_pb.ModelConfig(),
                                           ignore_unknown_fields=True)  # fmt: skip
            # What Triton's schema has no field for: each device's variant and why.
            for group in document["instance_group"]:
                for key in ("variant", "variant_reason", "backend", "threads"):
                    config.parameters[f"{group['name']}.{key}"].string_value = str(group[key])
            return pb.ModelConfigResponse(config=config)

        return await answered(context, call())

    async def ModelStatistics(self, request: Any, context: Any) -> pb.ModelStatisticsResponse:
        async def call() -> pb.ModelStatisticsResponse:
            models = self.models()
            served = ([self.serving(request.name, request.version)] if request.name
                      else models.serving())  # fmt: skip
            stats = [s for serving in served for s in v2.stats_document(serving)["model_stats"]]
            return json_format.ParseDict({"model_stats": stats}, pb.ModelStatisticsResponse())

        return await answered(context, call())

    async def ModelInfer(self, request: pb.ModelInferRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:  # fmt: skip
        admission = self.app.state.admission
        priority = requested_priority(request)
        if admission.decide_call(None if not priority else priority >= 2) is Decision.REFUSE:
            if admission.on_refusal:
                admission.on_refusal()
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                "overloaded: too many requests in progress")  # fmt: skip
        admission.enter()
        try:
            return await answered(context, self.infer(request, context))
        finally:
            admission.leave()

    async def infer(self, request: pb.ModelInferRequest,
                    context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:  # fmt: skip
        started = time.perf_counter()
        if self.app.state.draining:
            raise NotReady("draining: this replica is shutting down")
        serving = self.serving(request.model_name, request.model_version)
        if not serving.ready:
            raise NotReady(f"model {request.model_name!r} is not ready")
        tensors = decode(request)
        names = [o.name for o in serving.version.signature.outputs]
        wanted = [o.name for o in request.outputs] or names
        unknown = [n for n in wanted if n not in names]
        if unknown or len(set(wanted)) != len(wanted):
            raise InvalidInput(f"outputs: {unknown[0] if unknown else 'an output'} is "
                               f"{'not an output' if unknown else 'named twice'} (the model has "
                               f"{', '.join(names)})")  # fmt: skip
        timeout_seconds, level = call_options(request, context, self.settings, serving)
        outputs = await v2.score(serving, tensors, wanted, self.settings, timeout_seconds, level,
                                 started)  # fmt: skip
        response = pb.ModelInferResponse(
            model_name=request.model_name, model_version=str(serving.version.number),
            id=request.id,
        )  # fmt: skip
        for name, array in outputs.items():
            response.outputs.add(name=name, datatype=V2_DATATYPES[array.dtype], shape=array.shape)
            response.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
        return response


async def start_grpc(app: FastAPI, settings: Settings) -> grpc.aio.Server:
    """The service listening on [server] host and [grpc] port, started."""
    limit = settings.limits.max_body_bytes
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.max_concurrent_streams", settings.grpc.max_concurrent_streams),
        ("grpc.so_reuseport", int(settings.server.workers != 1)),  # workers share the port
    ])  # fmt: skip
    rpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(app), server)
    address = f"{settings.server.host}:{settings.grpc.port}"
    try:
        server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"[grpc] port: cannot listen on {address} ({exc})") from None
    await server.start()
    log.info("gRPC (KServe V2, inference.GRPCInferenceService) on %s", address)
    return server

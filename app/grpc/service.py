"""The KServe V2 inference protocol over gRPC: `inference.GRPCInferenceService` as Triton serves
it and `tritonclient.grpc` calls it (the service definition is Triton's own, generated in
tritonclient), on `[grpc] port`, in the REST server's process and event loop.

A thin transport over the data plane, as REST is: the same models, admission (one count of
requests in progress for both transports, refusals before any decoding), draining, deadlines
(the call's gRPC deadline or its `timeout` parameter in microseconds, never past the model's
default), `priority` (1 highest, 2 or more low), the repository's index, load and unload, and
the request latency histogram. Tensors arrive as `raw_input_contents` or typed `contents`;
outputs leave as `raw_output_contents`. Errors carry the gRPC code of their HTTP status and the
same message.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf import json_format
from prometheus_client import Histogram
from tritonclient.grpc import model_config_pb2 as config_pb
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as rpc

from app.dataplane import documents
from app.dataplane.admission import numbered_priority
from app.dataplane.plane import DataPlane
from app.dataplane.tensors import check_shape
from config.settings import Settings
from models.artifacts.signature import NUMPY_DTYPES, V2_DATATYPES
from scheduler.errors import InvalidInput, ServingError

log = logging.getLogger(__name__)
Response = TypeVar("Response")
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"  # its endpoint in the histogram
CODES = {
    HTTPStatus.BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    HTTPStatus.UNAUTHORIZED: grpc.StatusCode.UNAUTHENTICATED,
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
        dtype = NUMPY_DTYPES.get(tensor.datatype)
        if dtype is None:
            raise InvalidInput(f"{where}.datatype: {tensor.datatype!r} is not served here")
        shape = tuple(tensor.shape)
        check_shape(shape, f"{where}.shape")
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


def call_options(
    request: pb.ModelInferRequest, context: grpc.aio.ServicerContext, given: int | None
) -> tuple[float | None, int | None]:
    """The deadline (ms) a call asks for, the `timeout` parameter (microseconds) or its gRPC
    deadline, whichever is sooner; and the priority `given` as its `priority` parameter (1
    highest, 2 or more low), checked."""
    asked = []
    timeout_us = integer_parameter(request, "timeout")
    if timeout_us is not None:
        asked.append(timeout_us / 1000)
    remaining = context.time_remaining()
    if remaining is not None:
        asked.append(remaining * 1000)
    level = numbered_priority(given, "parameters.priority")
    return (min(asked) if asked else None), level


def routing_key(request: pb.ModelInferRequest) -> str | None:
    """The `routing_key` parameter (a canary split's key), as a string parameter."""
    parameters = request.parameters
    return parameters["routing_key"].string_param[:256] if "routing_key" in parameters else None


def priority_parameter(request: pb.ModelInferRequest) -> int | None:
    """Triton's `priority` parameter as sent (1 highest, 2 or more low, 0: the default)."""
    return integer_parameter(request, "priority")


def integer_parameter(request: pb.ModelInferRequest, name: str) -> int | None:
    """An integer parameter, in whichever integer field it travels (tritonclient sends
    `priority` as uint64, `timeout` as int64); absent: None. Any other kind is refused."""
    parameters = request.parameters
    if name not in parameters:
        return None
    value = parameters[name]
    kind = value.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param"):
        raise InvalidInput(f"parameters.{name}: an integer, not {kind or 'nothing'}")
    return int(getattr(value, kind))


def credential(context: grpc.aio.ServicerContext) -> str | None:
    """The token of the call's `authorization: Bearer <token>` metadata."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value.removeprefix("Bearer ")
    return None


class InferenceService(rpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """The service's calls, each a few lines over the data plane."""

    def __init__(self, plane: DataPlane, latency: Histogram | None = None) -> None:
        self.plane = plane
        self.latency = latency
        self._observers: dict[int, Callable[[float], None]] = {}  # by status, labels resolved once

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.plane.ready())

    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        async def call() -> pb.ModelReadyResponse:
            ready = self.plane.model_ready(request.name, request.version or None)
            return pb.ModelReadyResponse(ready=ready)

        return await answered(context, call())

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return json_format.ParseDict(documents.server_metadata(), pb.ServerMetadataResponse())

    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        async def call() -> pb.ModelMetadataResponse:
            document = self.plane.metadata(request.name, request.version or None)
            return json_format.ParseDict(document, pb.ModelMetadataResponse())

        return await answered(context, call())

    async def ModelConfig(self, request: Any, context: Any) -> pb.ModelConfigResponse:
        async def call() -> pb.ModelConfigResponse:
            document = self.plane.config(request.name, request.version or None)
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
            document = self.plane.statistics(request.name, request.version or None)
            return json_format.ParseDict(document, pb.ModelStatisticsResponse())

        return await answered(context, call())

    async def RepositoryIndex(self, request: Any, context: Any) -> pb.RepositoryIndexResponse:
        async def call() -> pb.RepositoryIndexResponse:
            rows = self.plane.index(ready_only=request.ready)
            return json_format.ParseDict({"models": rows}, pb.RepositoryIndexResponse())

        return await answered(context, call())

    async def RepositoryModelLoad(self, request: Any,
                                  context: Any) -> pb.RepositoryModelLoadResponse:  # fmt: skip
        async def call() -> pb.RepositoryModelLoadResponse:
            refuse_parameters(request.parameters)
            await self.plane.load_model(request.model_name, credential(context))
            return pb.RepositoryModelLoadResponse()

        return await answered(context, call())

    async def RepositoryModelUnload(self, request: Any,
                                    context: Any) -> pb.RepositoryModelUnloadResponse:  # fmt: skip
        async def call() -> pb.RepositoryModelUnloadResponse:
            refuse_parameters(request.parameters)
            await self.plane.unload_model(request.model_name, credential(context))
            return pb.RepositoryModelUnloadResponse()

        return await answered(context, call())

    async def ModelInfer(self, request: pb.ModelInferRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:  # fmt: skip
        started = time.perf_counter()
        status = HTTPStatus.OK
        plane = self.plane
        try:
            try:
                given = priority_parameter(request)
            except ServingError as exc:  # refused before admission: nothing to leave
                status = exc.status
                await context.abort(CODES.get(exc.status, grpc.StatusCode.INTERNAL), str(exc))
            if not plane.admit(None if not given else given >= 2):
                status = HTTPStatus(plane.settings.admission.overload_status)
                await context.abort(grpc.StatusCode.UNAVAILABLE,
                                    "overloaded: too many requests in progress")  # fmt: skip
            try:
                return await self._infer(request, context, given)
            except ServingError as exc:
                status = exc.status
                await context.abort(CODES.get(exc.status, grpc.StatusCode.INTERNAL), str(exc))
            except Exception:
                status = HTTPStatus.INTERNAL_SERVER_ERROR
                log.exception("gRPC call failed")
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            finally:
                plane.admission.leave()
            raise AssertionError("unreachable: abort raises")
        finally:
            if self.latency is not None:
                observe = self._observers.get(status)
                if observe is None:
                    child = self.latency.labels(endpoint=MODEL_INFER, status=str(int(status)))
                    observe = self._observers[status] = child.observe
                observe(time.perf_counter() - started)

    async def _infer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext,
                     given_priority: int | None) -> pb.ModelInferResponse:  # fmt: skip
        timeout_ms, priority = call_options(request, context, given_priority)
        inferred = await self.plane.infer(
            request.model_name, request.model_version or None, decode(request),
            [o.name for o in request.outputs], timeout_ms, priority, routing_key(request),
        )  # fmt: skip
        response = pb.ModelInferResponse(
            model_name=request.model_name, model_version=str(inferred.serving.version.number),
            id=request.id,
        )  # fmt: skip
        for name, array in inferred.outputs.items():
            response.outputs.add(name=name, datatype=V2_DATATYPES[array.dtype], shape=array.shape)
            response.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
        return response


def refuse_parameters(parameters: Any) -> None:
    """A load's parameters that would replace the model's config or files: not here."""
    for key in parameters:
        if key == "config" or str(key).startswith("file:"):
            raise InvalidInput(
                f"parameters.{str(key)[:64]}: not supported here; edit the model's folder "
                "(config.toml, version folders) and load it again"
            )


async def start_grpc(plane: DataPlane, settings: Settings, latency: Histogram | None = None,
                     shared_port: bool = False) -> grpc.aio.Server:  # fmt: skip
    """The service listening on [server] host and [grpc] port, started; `shared_port`: other
    processes listen on it too (SO_REUSEPORT)."""
    limit = settings.limits.max_body_bytes
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.max_concurrent_streams", settings.grpc.max_concurrent_streams),
        ("grpc.so_reuseport", int(shared_port)),
    ])  # fmt: skip
    rpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(plane, latency), server)
    address = f"{settings.server.host}:{settings.grpc.port}"
    try:
        server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"[grpc] port: cannot listen on {address} ({exc})") from None
    await server.start()
    log.info("gRPC (KServe V2, inference.GRPCInferenceService) on %s", address)
    return server

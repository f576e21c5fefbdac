"""The two reference servers the benchmark runs beside ours, with the same FastAPI app shape:

- `baseline`: the paper's starting point served naively: the heavy FP32 DCN-v2 in PyTorch, one
  inference call per request, no batching (a plain `def` endpoint in FastAPI's thread pool).
- `frontend`: parses and validates the same /v1/rank body, looks the ids up, and answers a fixed
  ranking without scoring: the ceiling the HTTP layer alone allows on this machine.
- `frontend-v2`: parses a V2 infer body (JSON or binary tensors) into numpy arrays (the server's
  own codec) and answers a fixed score per row without scoring: the same ceiling for V2.
- `frontend-grpc`: the V2 gRPC service's ModelInfer alone (grpc.aio with Triton's service
  definition), decoding the request's tensors with the server's own `decode` and answering a
  fixed score per row as raw contents: the same ceiling for gRPC. Its HTTP port answers
  readiness only.

`frontend-v2` and `frontend-grpc` with `--model FILE --backend KIND` score each request's rows
inline instead, in the handler, on the event loop's thread (a session of one runtime thread,
the server's own backend class): the front end and the model in one process with nothing between
them, no batching, no admission, no metrics. That is the floor for any server that runs the
model where it parses the request; what a server costs beyond it is its own.

`python -m bench.apps {baseline,frontend,...} --port P [--grpc-port G] [--repository R]
[--model FILE --backend KIND]` serves one with uvicorn, uvloop and httptools, as `python -m app`
does.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import uvicorn
from fastapi import FastAPI, Request, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.dataplane.ranking import Ranker
from app.dataplane.schemas import RankRequest, RankResponse
from app.http import errors
from config.settings import Settings, load_settings
from models.artifacts.repository import ModelVersion, open_version
from scheduler.backend import BACKENDS, BackendConfig, Inputs, create_backend

Scorer = Callable[[Inputs], np.ndarray]


def fixed_scores(inputs: Inputs) -> np.ndarray:
    """A score of 0 per row: no model runs."""
    return np.zeros((len(next(iter(inputs.values()))), 1), dtype=np.float32)


def inline_scorer(model: Path, backend: str) -> Scorer:
    """The model's first output for the rows, computed in the caller's thread by `backend` with
    one runtime thread (the server's own session on one core)."""
    session = create_backend(backend, "inline", BackendConfig(model, threads=1))
    session.load()
    return lambda inputs: next(iter(session.run(inputs).values()))


class BodyLimit:
    """Refuse bodies over `max_bytes` with 413, by Content-Length at once or while streaming (our
    server does this in its HTTP protocol; these plain uvicorn servers need it as middleware)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except BodyTooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = orjson.dumps({"error": f"body: larger than the limit of {self.max_bytes} bytes"})
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class BodyTooLarge(Exception):
    pass


def base_app(name: str, settings: Settings) -> FastAPI:
    app = FastAPI(title=name)
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=settings.limits.max_body_bytes)

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    return app


def baseline_app(settings: Settings, version: ModelVersion) -> FastAPI:
    import torch  # only here: the serving path never imports torch

    from bench.baseline_model import BASELINE_VARIANT, load_baseline

    # One intra-op thread per core the process may use (torch counts the machine's cores).
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model = load_baseline(version)
    app = base_app("baseline", settings)
    ranker = Ranker.for_version(version, settings.limits)

    @app.post("/v1/rank", response_model=RankResponse)
    def rank(body: RankRequest) -> Response:
        candidates = ranker.candidates(body)
        scores = np.empty(0, dtype=np.float32)
        if candidates.inputs is not None:
            inputs = candidates.inputs
            with torch.inference_mode():
                scores = model(*(torch.from_numpy(inputs[k]) for k in ("categorical", "dense")))
            scores = scores.numpy()
        return errors.json_response(
            ranker.response(candidates, scores, {"cpu": BASELINE_VARIANT}, body.k)
        )

    return app


def frontend_app(settings: Settings, version: ModelVersion) -> FastAPI:
    app = base_app("frontend", settings)
    ranker = Ranker.for_version(version, settings.limits)

    @app.post("/v1/rank", response_model=RankResponse)
    async def rank(body: RankRequest) -> Response:
        candidates = ranker.candidates(body, with_inputs=False)
        scores = np.linspace(1.0, 0.0, len(candidates.ids), dtype=np.float32)  # no model runs
        return errors.json_response(ranker.response(candidates, scores, {}, body.k))

    return app


def frontend_v2_app(settings: Settings, scores_of: Scorer = fixed_scores) -> FastAPI:
    from app.http.v2_codec import (
        HEADER_LENGTH,
        binary_outputs,
        decode_inputs,
        encode_response,
        parse_request,
    )

    app = base_app("frontend-v2", settings)

    @app.post("/v2/models/{name}/infer")
    async def infer(request: Request, name: str) -> Response:
        parsed, tail = parse_request(await request.body(), request.headers.get(HEADER_LENGTH))
        scores = scores_of(decode_inputs(parsed, tail))
        binary = binary_outputs(parsed, ["score"])
        header = {"model_name": name, "model_version": "1"}
        body, length = encode_response(header, {"score": scores}, binary)
        if length is None:
            return Response(body, media_type="application/json")
        return Response(body, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(length)})  # fmt: skip

    return app


def frontend_grpc_app(settings: Settings, grpc_port: int,
                      scores_of: Scorer = fixed_scores) -> FastAPI:  # fmt: skip
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as rpc

    from app.grpc.service import decode

    class FixedAnswer(rpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
        async def ServerLive(self, request: object, context: object) -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=True)

        async def ModelInfer(self, request: pb.ModelInferRequest,
                             context: object) -> pb.ModelInferResponse:  # fmt: skip
            scores = scores_of(decode(request))
            response = pb.ModelInferResponse(model_name=request.model_name, model_version="1",
                                             id=request.id)  # fmt: skip
            response.outputs.add(name="score", datatype="FP32", shape=scores.shape)
            response.raw_output_contents.append(scores.tobytes())
            return response

    app = base_app("frontend-grpc", settings)
    servers: list[grpc.aio.Server] = []

    @app.on_event("startup")
    async def start() -> None:
        server = grpc.aio.server()
        rpc.add_GRPCInferenceServiceServicer_to_server(FixedAnswer(), server)
        server.add_insecure_port(f"127.0.0.1:{grpc_port}")
        await server.start()
        servers.append(server)

    @app.on_event("shutdown")
    async def stop() -> None:
        for server in servers:
            await server.stop(1)

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.apps", description=__doc__)
    parser.add_argument("kind", choices=["baseline", "frontend", "frontend-v2", "frontend-grpc"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, help="frontend-grpc's gRPC port")
    parser.add_argument("--repository", type=Path, help="model repository (default: settings)")
    parser.add_argument("--model", type=Path, help="frontend-v2/-grpc: score with this model file")
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="onnxruntime-cpu",
                        help="the runtime that scores --model")  # fmt: skip
    args = parser.parse_args(argv)
    settings = load_settings()
    if args.model is not None and args.kind not in ("frontend-v2", "frontend-grpc"):
        parser.error("--model: frontend-v2 and frontend-grpc only")
    scores_of = fixed_scores if args.model is None else inline_scorer(args.model, args.backend)
    if args.kind == "frontend-v2":
        app = frontend_v2_app(settings, scores_of)
    elif args.kind == "frontend-grpc":
        if args.grpc_port is None:
            parser.error("frontend-grpc needs --grpc-port")
        app = frontend_grpc_app(settings, args.grpc_port, scores_of)
    else:
        root = args.repository or settings.model.repository
        version = open_version(Path(root), settings.model.name, settings.model.version)
        app = (baseline_app if args.kind == "baseline" else frontend_app)(settings, version)
    uvicorn.run(
        app, host="127.0.0.1", port=args.port, loop="uvloop",
        http="httptools", log_level="warning", access_log=False,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

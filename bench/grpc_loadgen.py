"""The open-loop generator of `bench/loadgen.py` for the V2 gRPC service: the same LoadSpec (its
bodies V2 JSON, turned into ModelInferRequests with raw contents before the clock starts; its
port the gRPC port; the model read from its path), the same LoadResult, gRPC codes as the HTTP
statuses they stand for. Calls go out on schedule over `connections` channels, whatever is still
in flight, as the HTTP generator's do.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as rpc

from bench.loadgen import CLIENT_TIMEOUT, LoadResult, LoadSpec
from models.artifacts.signature import NUMPY_DTYPES

STATUS_OF_CODE = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
CHANNELS = 4  # HTTP/2 connections; calls are multiplexed over them


def infer_request(model: str, body: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    for tensor in json.loads(body)["inputs"]:
        request.inputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        array = np.asarray(tensor["data"], dtype=NUMPY_DTYPES[tensor["datatype"]])
        request.raw_input_contents.append(array.tobytes())
    return request


async def offer(spec: LoadSpec) -> LoadResult:
    model = spec.path.split("/")[3]  # /v2/models/{name}/infer
    requests = [infer_request(model, body) for body in spec.bodies]
    channels = [grpc.aio.insecure_channel(f"{spec.host}:{spec.port}") for _ in range(CHANNELS)]
    stubs = [rpc.GRPCInferenceServiceStub(c) for c in channels]
    total = int(spec.rate * spec.seconds)
    statuses = [0] * total
    latencies = [0.0] * total
    lags: list[float] = []

    async def call(i: int) -> None:
        started = time.perf_counter()
        try:
            await stubs[i % CHANNELS].ModelInfer(requests[i % len(requests)],
                                                 timeout=spec.client_timeout_seconds)  # fmt: skip
            statuses[i] = 200
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            client_side = code == grpc.StatusCode.DEADLINE_EXCEEDED and (
                time.perf_counter() - started >= spec.client_timeout_seconds
            )
            statuses[i] = CLIENT_TIMEOUT if client_side else STATUS_OF_CODE.get(code, 500)
        latencies[i] = time.perf_counter() - started

    for stub in stubs:  # connect before the clock starts
        await stub.ServerLive(pb.ServerLiveRequest(), timeout=10)
    tasks = []
    begin = time.perf_counter()
    for i in range(total):
        due = begin + i / spec.rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lags.append(max(0.0, time.perf_counter() - due))
        tasks.append(asyncio.create_task(call(i)))
    await asyncio.gather(*tasks)
    for c in channels:
        await c.close()
    return LoadResult(total, spec.seconds, statuses, latencies,
                      float(np.percentile(lags, 99)) if lags else 0.0)  # fmt: skip


def run(spec: LoadSpec) -> LoadResult:
    """Run `spec` in a fresh generator process (pinned to `spec.cpu`) and return its result."""
    completed = subprocess.run(
        [sys.executable, "-m", "bench.grpc_loadgen"], input=json.dumps(asdict(spec)).encode(),
        capture_output=True, timeout=spec.seconds + spec.client_timeout_seconds + 60, check=False,
    )  # fmt: skip
    if completed.returncode != 0:
        raise RuntimeError(f"gRPC load generator failed: {completed.stderr.decode()[-2000:]}")
    return LoadResult(**json.loads(completed.stdout))


def main() -> int:
    spec = LoadSpec(**json.loads(sys.stdin.read()))
    if spec.cpu is not None:
        os.sched_setaffinity(0, {spec.cpu})
    json.dump(asdict(asyncio.run(offer(spec))), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

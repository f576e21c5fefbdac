"""The V2 gRPC service of a real server process, driven by tritonclient.grpc (and by the raw
stub, for typed contents): metadata, config, statistics and inference against ONNX Runtime run
directly; each mistake's gRPC code and message; the in-flight limit shared with REST; drain."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as rpc
from tritonclient.grpc._utils import _get_inference_request
from tritonclient.utils import InferenceServerException

from app.grpc.service import integer_parameter, priority_parameter
from bench.plain_models import user_sized_ranker
from scheduler.errors import InvalidInput
from tests.app.servers import free_port, start_server, stop
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(180)
MODEL = "ranker"
MAX_MESSAGE_BYTES = 200_000


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grpc-repository")
    user_sized_ranker(root / MODEL / "1" / "model.onnx", vocabulary=500)
    return root


def rows(count: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"cat": rng.integers(0, 500, (count, 8)).astype(np.int64),
            "dense": rng.random((count, 4)).astype(np.float32)}  # fmt: skip


def infer_inputs(values: dict[str, np.ndarray], module: object = triton) -> list[object]:
    inputs = []
    for name, array in values.items():
        tensor = module.InferInput(name, list(array.shape),  # type: ignore[attr-defined]
                                   "INT64" if name == "cat" else "FP32")  # fmt: skip
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def code_of(call: object) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as raised:
        call()  # type: ignore[operator]
    return str(raised.value.status()), raised.value.message()


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("grpc-log") / "server.log"
    settings = {"GRPC__PORT": str(port), "LIMITS__MAX_BODY_BYTES": str(MAX_MESSAGE_BYTES)}
    process, _ = start_server(repository, settings, log)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop(process)


def test_metadata_config_and_inference_over_grpc(server: str, repository: Path) -> None:
    client = triton.InferenceServerClient(server)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    assert client.get_server_metadata().name == "recsys-serve"
    metadata = client.get_model_metadata(MODEL, as_json=True)
    assert metadata["versions"] == ["1"]
    assert [(i["name"], i["datatype"], i["shape"]) for i in metadata["inputs"]] == [
        ("cat", "INT64", ["-1", "8"]), ("dense", "FP32", ["-1", "4"])
    ]  # fmt: skip
    config = client.get_model_config(MODEL, as_json=True)["config"]
    assert config["max_batch_size"] > 0 and config["platform"] == "onnxruntime_onnx"
    groups = [g["name"] for g in config["instance_group"]]
    assert groups == ["cpu-openvino", "cpu-onnxruntime"]
    assert config["parameters"]["cpu-onnxruntime.variant"]["string_value"] == "model"

    before = client.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
    values = rows(64)
    direct = ort.InferenceSession(str(repository / MODEL / "1" / "model.onnx")).run(None, values)
    for _ in range(3):
        result = client.infer(MODEL, infer_inputs(values), request_id="r-1")
        served = result.as_numpy("score")
        assert served is not None and served.shape == (64,)
        assert np.allclose(served, direct[0], atol=1e-5)
        assert result.get_response().id == "r-1"
    after = client.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
    assert int(after["inference_count"]) - int(before.get("inference_count", 0)) == 3 * 64
    assert int(after["execution_count"]) - int(before.get("execution_count", 0)) == 3


def test_typed_contents_are_read_too(server: str, repository: Path) -> None:
    values = rows(5, seed=3)
    request = pb.ModelInferRequest(model_name=MODEL)
    cat = request.inputs.add(name="cat", datatype="INT64", shape=[5, 8])
    cat.contents.int64_contents.extend(values["cat"].ravel().tolist())
    dense = request.inputs.add(name="dense", datatype="FP32", shape=[5, 4])
    dense.contents.fp32_contents.extend(values["dense"].ravel().tolist())
    with grpc.insecure_channel(server) as channel:
        response = rpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    (output,) = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("score", "FP32", [5])
    served = np.frombuffer(response.raw_output_contents[0], np.float32)
    direct = ort.InferenceSession(str(repository / MODEL / "1" / "model.onnx")).run(None, values)
    assert np.allclose(served, direct[0], atol=1e-5)


def test_mistakes_get_their_code_and_name_the_field(server: str) -> None:
    client = triton.InferenceServerClient(server)
    values = rows(4)
    assert code_of(lambda: client.infer("nope", infer_inputs(values)))[0] == "StatusCode.NOT_FOUND"
    assert code_of(lambda: client.get_model_config("nope"))[0] == "StatusCode.NOT_FOUND"
    wrong_shape = {"cat": values["cat"][:, :5], "dense": values["dense"]}
    code, message = code_of(lambda: client.infer(MODEL, infer_inputs(wrong_shape)))
    assert code == "StatusCode.INVALID_ARGUMENT" and "inputs.cat.shape" in message
    outputs = [triton.InferRequestedOutput("nonsense")]
    code, message = code_of(lambda: client.infer(MODEL, infer_inputs(values), outputs=outputs))
    assert code == "StatusCode.INVALID_ARGUMENT" and "nonsense is not an output" in message
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="cat", datatype="INT64", shape=[4, 8])
    request.inputs.add(name="dense", datatype="FP32", shape=[4, 4])
    request.raw_input_contents.extend([values["cat"].tobytes(), b"\0" * 7])
    with grpc.insecure_channel(server) as channel, pytest.raises(grpc.RpcError) as raised:
        rpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs.dense: 7 bytes of raw contents" in str(raised.value.details())
    for raw in (True, False):  # more dimensions than numpy allows (64), raw or typed
        request = pb.ModelInferRequest(model_name=MODEL)
        request.inputs.add(name="cat", datatype="INT64", shape=[1] * 65)
        request.inputs.add(name="dense", datatype="FP32", shape=[1, 4])
        if raw:
            request.raw_input_contents.extend([b"\0" * 8, b"\0" * 16])
        else:
            request.inputs[0].contents.int64_contents.append(0)
            request.inputs[1].contents.fp32_contents.extend([0.0] * 4)
        with grpc.insecure_channel(server) as channel, pytest.raises(grpc.RpcError) as raised:
            rpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value
        assert "inputs.cat.shape: 65 dimensions, at most 16" in str(raised.value.details())
    request = pb.ModelInferRequest(model_name=MODEL)  # a priority of the wrong kind
    request.parameters["priority"].double_param = 1.5
    with grpc.insecure_channel(server) as channel, pytest.raises(grpc.RpcError) as raised:
        rpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "parameters.priority: an integer, not double_param" in str(raised.value.details())


def test_priority_and_timeout_are_read_as_tritonclient_sends_them() -> None:
    """tritonclient sends `priority` as a uint64 parameter and `timeout` as an int64 one (its own
    request builder, as `infer(priority=2, timeout=5000)` calls it); either integer field is read,
    any other kind refused naming the parameter."""
    request = _get_inference_request(
        model_name=MODEL, inputs=infer_inputs(rows(1)), model_version="", request_id="",
        outputs=None, sequence_id=0, sequence_start=False, sequence_end=False, priority=2,
        timeout=5000, parameters=None,
    )  # fmt: skip
    assert request.parameters["priority"].WhichOneof("parameter_choice") == "uint64_param"
    assert priority_parameter(request) == 2 and integer_parameter(request, "timeout") == 5000
    request.parameters["priority"].int64_param = 3
    assert priority_parameter(request) == 3
    del request.parameters["priority"]
    assert priority_parameter(request) is None
    request.parameters["priority"].string_param = "low"
    with pytest.raises(InvalidInput, match=r"parameters\.priority: an integer, not string_param"):
        priority_parameter(request)


def test_the_repository_calls_load_unload_and_index_with_the_admin_token(
    repository: Path, tmp_path: Path
) -> None:
    port = free_port()
    token = "sixteen-or-more-characters"
    settings = {"GRPC__PORT": str(port), "MODEL_CONTROL__MODE": "explicit",
                "FAULTS__ADMIN_TOKEN": token}  # fmt: skip
    process, url = start_server(repository, settings, tmp_path / "server.log")
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    admin = {"authorization": f"Bearer {token}"}
    try:
        index = client.get_model_repository_index(as_json=True)["models"]
        assert index == [{"name": MODEL, "version": "1", "state": "READY"}]
        code, message = code_of(lambda: client.unload_model(MODEL))
        assert code == "StatusCode.UNAUTHENTICATED" and "bearer token" in message
        rest = f"{url}/v2/repository/models/{MODEL}/load"  # REST asks for the same token
        assert httpx.post(rest).status_code == 401
        assert httpx.post(rest, headers={"Authorization": "Bearer wrong-token"}).status_code == 401
        assert httpx.post(rest, headers=admin).status_code == 200
        client.unload_model(MODEL, headers=admin)
        (row,) = client.get_model_repository_index(as_json=True)["models"]
        assert (row["name"], row["state"], row["reason"]) == (MODEL, "UNAVAILABLE", "unloaded")
        code, _ = code_of(lambda: client.infer(MODEL, infer_inputs(rows(4))))
        assert code == "StatusCode.NOT_FOUND"
        client.load_model(MODEL, headers=admin)
        assert client.is_model_ready(MODEL)
        assert client.infer(MODEL, infer_inputs(rows(4))).as_numpy("score").shape == (4,)
        # gRPC calls land in the latency histogram REST requests do.
        endpoint = 'endpoint="/inference.GRPCInferenceService/ModelInfer",status="200"'
        assert endpoint in httpx.get(f"{url}/metrics").text
    finally:
        client.close()
        stop(process)


def test_a_message_over_the_body_limit_is_refused(server: str) -> None:
    client = triton.InferenceServerClient(server)
    big = rows(3000)  # 3,000 x (8 x 8 + 4 x 4) bytes: 240 KB, over the 200 KB limit
    code, message = code_of(lambda: client.infer(MODEL, infer_inputs(big)))
    assert code == "StatusCode.RESOURCE_EXHAUSTED" and "larger than max" in message, message
    assert client.infer(MODEL, infer_inputs(rows(100))).as_numpy("score") is not None


def test_a_call_that_cannot_meet_its_deadline_is_refused_at_once(server: str) -> None:
    client = triton.InferenceServerClient(server)
    # `timeout` in microseconds, as Triton reads it; the scheduler's prediction refuses it, as
    # it does over REST (503 there), before it is queued.
    code, message = code_of(lambda: client.infer(MODEL, infer_inputs(rows(4)), timeout=1))
    assert code == "StatusCode.UNAVAILABLE" and "cannot finish within 0 ms" in message, message
    # A gRPC deadline counts the same way (here one the batch can meet).
    result = client.infer(MODEL, infer_inputs(rows(4)), client_timeout=5)
    assert result.as_numpy("score") is not None


def test_the_in_flight_limit_counts_grpc_calls(repository: Path, tmp_path: Path) -> None:
    port = free_port()
    settings = {"GRPC__PORT": str(port), "ADMISSION__MAX_IN_FLIGHT_REQUESTS": "2",
                "BATCHING__MAX_QUEUE_DELAY_MS": "20"}  # fmt: skip
    process, url = start_server(repository, settings, tmp_path / "server.log")
    try:

        async def burst() -> Counter[str]:
            client = triton_aio.InferenceServerClient(f"127.0.0.1:{port}")
            try:
                calls = [client.infer(MODEL, infer_inputs(rows(8, i), triton_aio))
                         for i in range(30)]  # fmt: skip
                results = await asyncio.gather(*calls, return_exceptions=True)
            finally:
                await client.close()
            outcomes: Counter[str] = Counter()
            for r in results:
                if isinstance(r, InferenceServerException):
                    assert "overloaded: too many requests in progress" in r.message(), r
                    outcomes[str(r.status())] += 1
                else:
                    outcomes["ok"] += 1
            return outcomes

        outcomes = asyncio.run(burst())
        assert outcomes["ok"] >= 2 and outcomes["StatusCode.UNAVAILABLE"] >= 1, outcomes
        assert sum(outcomes.values()) == 30
        metrics = httpx.get(f"{url}/metrics").text
        counter = 'recsys_refused_requests_total{reason="in_flight"}'
        refused = [line for line in metrics.splitlines() if line.startswith(counter)]
        assert refused and float(refused[0].split()[-1]) == outcomes["StatusCode.UNAVAILABLE"]
    finally:
        stop(process)


def test_sigterm_drains_grpc_calls(repository: Path, tmp_path: Path) -> None:
    port = free_port()
    settings = {"GRPC__PORT": str(port), "SERVER__DRAIN_DELAY_SECONDS": "1.0"}
    process, _ = start_server(repository, settings, tmp_path / "server.log")
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    outcomes: Counter[str] = Counter()
    signalled = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if signalled is None and outcomes["ok"] >= 20:
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
        try:
            client.infer(MODEL, infer_inputs(rows(8)), client_timeout=10)
            outcomes["ok"] += 1
        except InferenceServerException as exc:
            if signalled is None:
                raise
            if exc.status() == "StatusCode.UNAVAILABLE" and "draining" in exc.message():
                outcomes["refused: draining"] += 1
                break
            raise
    assert process.wait(timeout=30) == 0
    assert outcomes["ok"] >= 20 and outcomes["refused: draining"] == 1, outcomes


def test_a_port_given_to_two_listeners_is_one_line_at_start_up(repository: Path) -> None:
    """With workers both would listen (SO_REUSEPORT) and split the connections between HTTP and
    gRPC; refused before anything starts."""
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "app", "--port", str(port)], capture_output=True, text=True,
        timeout=60, check=False, cwd=ROOT,
        env={**os.environ, "RECSYS_MODEL__REPOSITORY": str(repository),
             "RECSYS_GRPC__PORT": str(port), "RECSYS_SERVER__WORKERS": "2"},
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: RECSYS_* variables: invalid settings: grpc.port: {port} is server.port too; "
        "each listener needs its own"
    ]

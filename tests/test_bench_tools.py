"""The issue-23 measuring tools, run for real and briefly, so they cannot rot unseen: `bench.engine`
(the real engine process fed by real worker links) and `bench.apps frontend-grpc` (the gRPC front
end alone the ledger compares with, called by tritonclient, with a fixed answer and with the model
scored inline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import triton_to_np_dtype as triton_to_np

from bench import processes
from bench.plain_models import user_sized_ranker
from scheduler.backend import BackendConfig
from scheduler.onnxruntime_backend import OnnxRuntimeCpuBackend

pytestmark = pytest.mark.timeout(300)


def test_the_engine_bench_answers_every_request_and_reports_the_engines_cost(
    tmp_path: Path,
) -> None:
    out = tmp_path / "engine.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench.engine", "--links", "2", "--rates", "100",
         "--seconds", "1", "--out", str(out)],
        cwd=processes.ROOT, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "engine pinned to core 0; 2 worker links" in completed.stdout
    [figures] = json.loads(out.read_text())
    assert figures["sent"] == figures["answered"] == 100 and figures["failed"] == {}
    # Every request crosses to the engine and is scored there: its CPU per request is at least
    # what the model costs alone (tens of microseconds), and less than a whole second.
    assert 20 < figures["engine_us"] < 1e6
    assert 0 < figures["p50_ms"] <= figures["p99_ms"] < 1000


def call_front_end(command: list[str], log: Path) -> dict[int, np.ndarray]:
    """The scores the gRPC front end answers for 100 and for 1 row of the user-sized ranker's
    inputs (ones), by row count."""
    port, grpc_port = processes.free_port(), processes.free_port()
    command = [*command, "--port", str(port), "--grpc-port", str(grpc_port)]
    scores = {}
    with processes.running(command, port, dict(os.environ), log):
        client = triton.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        for rows in (100, 1):
            inputs = []
            for name, datatype, width in (("cat", "INT64", 8), ("dense", "FP32", 4)):
                tensor = triton.InferInput(name, [rows, width], datatype)
                tensor.set_data_from_numpy(np.ones((rows, width), triton_to_np(datatype)))
                inputs.append(tensor)
            scores[rows] = client.infer("user-ranker", inputs).as_numpy("score")
        client.close()
    return scores


def test_the_grpc_front_end_alone_decodes_the_call_and_answers_a_fixed_score_per_row(
    tmp_path: Path,
) -> None:
    command = [sys.executable, "-m", "bench.apps", "frontend-grpc"]
    scores = call_front_end(command, tmp_path / "front.log")
    assert {rows: s.tolist() for rows, s in scores.items()} == {100: [[0.0]] * 100, 1: [[0.0]]}


def test_the_grpc_front_end_with_the_model_inline_answers_the_models_scores(
    tmp_path: Path,
) -> None:
    model = tmp_path / "model.onnx"
    user_sized_ranker(model)
    command = [sys.executable, "-m", "bench.apps", "frontend-grpc", "--model", str(model),
               "--backend", "onnxruntime-cpu"]  # fmt: skip
    scores = call_front_end(command, tmp_path / "front.log")
    session = OnnxRuntimeCpuBackend("reference", BackendConfig(model, threads=1))
    session.load()
    for rows, answered in scores.items():
        inputs: dict[str, np.ndarray] = {
            "cat": np.ones((rows, 8), np.int64),
            "dense": np.ones((rows, 4), np.float32),
        }
        [expected] = session.run(inputs).values()
        assert answered.shape == expected.shape == (rows,)
        np.testing.assert_allclose(answered, expected, rtol=1e-6)
        assert len(set(answered.ravel().tolist())) == 1 and answered.any()  # rows alike, not 0

"""KServe V2 with the real tritonclient (JSON and binary tensors), and the /metrics scrape."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families

from models.artifacts import repository
from models.runtime import OnnxRuntimeSession
from tests.conftest import MODEL_NAME


@pytest.fixture(scope="module")
def inputs(built_repository: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    version = repository.open_version(built_repository, MODEL_NAME)
    split = version.load_test_split()
    arrays = version.tables.assemble(split.user_rows[:300], split.item_rows[:300])
    variant = version.manifest.variant(version.manifest.default_variants["cpu"])
    expected = OnnxRuntimeSession(version.file(variant.file)).run(arrays)
    return arrays, expected


def triton_inputs(arrays: dict[str, np.ndarray], binary: bool) -> list[triton.InferInput]:
    result = []
    for name, datatype in (("categorical", "INT64"), ("dense", "FP32")):
        tensor = triton.InferInput(name, list(arrays[name].shape), datatype)
        tensor.set_data_from_numpy(arrays[name], binary_data=binary)
        result.append(tensor)
    return result


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infers_with_binary_and_json_tensors(
    server: str, inputs: tuple[dict[str, np.ndarray], np.ndarray], binary: bool
) -> None:
    arrays, expected = inputs
    client = triton.InferenceServerClient(server.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL_NAME)
    metadata = client.get_model_metadata(MODEL_NAME)
    assert [i["name"] for i in metadata["inputs"]] == ["categorical", "dense"]
    assert client.get_model_config(MODEL_NAME)["max_batch_size"] >= 300
    outputs = [triton.InferRequestedOutput("probability", binary_data=binary)]
    result = client.infer(
        MODEL_NAME, triton_inputs(arrays, binary), outputs=outputs, request_id="r-42"
    )
    assert result.get_response()["id"] == "r-42"
    scores = result.as_numpy("probability")
    assert scores.shape == (300,)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    stats = client.get_inference_statistics(MODEL_NAME)["model_stats"][0]
    assert stats["inference_count"] >= 300 and stats["inference_stats"]["compute_infer"]["ns"] > 0
    client.close()


def test_v2_errors(client: httpx.Client) -> None:
    unknown = client.post("/v2/models/nope/infer", json={"inputs": []})
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]
    bad = client.post(
        f"/v2/models/{MODEL_NAME}/infer",
        json={"inputs": [
            {"name": "categorical", "shape": [1, 7], "datatype": "FP32", "data": [0.0] * 7},
            {"name": "dense", "shape": [1, 19], "datatype": "FP32", "data": [0.0] * 19},
        ]},
    )  # fmt: skip
    assert bad.status_code == 400 and "categorical" in bad.json()["error"]
    shape = client.post(
        f"/v2/models/{MODEL_NAME}/infer",
        json={"inputs": [
            {"name": "categorical", "shape": [1, 7], "datatype": "INT64", "data": [0] * 6},
            {"name": "dense", "shape": [1, 19], "datatype": "FP32", "data": [0.0] * 19},
        ]},
    )  # fmt: skip
    assert shape.status_code == 400 and "inputs[0].data" in shape.json()["error"]
    assert client.get("/v2").json()["extensions"] == [
        "binary_tensor_data",
        "statistics",
        "model_repository",
    ]


def test_metrics_are_prometheus_histograms_gauges_and_counters(client: httpx.Client) -> None:
    client.post("/v1/rank", json={"user_id": 1, "k": 3})
    text = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    histograms = ["request_duration_seconds", "queue_wait_seconds", "batch_rows",
                  "batch_fill_ratio", "batch_execution_seconds",
                  "batching_window_seconds"]  # fmt: skip
    gauges = ["queue_rows", "queue_requests", "device_batches_in_flight",
              "device_latency_fixed_seconds", "device_latency_seconds_per_row"]  # fmt: skip
    for name in histograms:
        assert families[f"recsys_{name}"].type == "histogram", name
    for name in gauges:
        assert families[f"recsys_{name}"].type == "gauge", name
    assert families["recsys_rows_scored"].type == "counter"
    rank = [
        s for s in families["recsys_request_duration_seconds"].samples
        if s.name.endswith("_count") and s.labels == {"endpoint": "/v1/rank", "status": "200"}
    ]  # fmt: skip
    assert rank and rank[0].value >= 1
    windows = {
        s.labels["closed_by"]: s.value for s in families["recsys_batching_window_seconds"].samples
        if s.name.endswith("_count")
    }  # fmt: skip
    assert set(windows) <= {"idle", "full", "window"} and sum(windows.values()) >= 1
    scored = sum(
        s.value for s in families["recsys_rows_scored"].samples if s.name.endswith("_total")
    )
    assert scored >= 1682


def test_v2_timeout_and_priority_parameters(client: httpx.Client) -> None:
    tensors = [
        {"name": "categorical", "shape": [1, 7], "datatype": "INT64", "data": [0] * 7},
        {"name": "dense", "shape": [1, 19], "datatype": "FP32", "data": [0.0] * 19},
    ]
    url = f"/v2/models/{MODEL_NAME}/infer"
    refused = client.post(url, json={"inputs": tensors, "parameters": {"timeout": 1}})
    assert refused.status_code == 503 and "Retry-After" in refused.headers
    low = client.post(
        url, json={"inputs": tensors, "parameters": {"priority": 2, "timeout": 10**7}}
    )
    assert low.status_code == 200
    bad = client.post(url, json={"inputs": tensors, "parameters": {"priority": "high"}})
    assert bad.status_code == 400 and "parameters.priority" in bad.json()["error"]

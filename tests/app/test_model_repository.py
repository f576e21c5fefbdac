"""Serving any model: a repository of plain ONNX and OpenVINO models beside the built MovieLens
one, driven through tritonclient (values checked against the runtimes run directly), the
repository API, a version swapped in under load, broken versions refused, poll mode, and
start-up mistakes as one line."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from bench import loadgen
from bench.plain_models import (
    fixed_shape_model,
    to_openvino_ir,
    two_headed_ranker,
    user_sized_ranker,
)
from bench.workload import rank_bodies
from models.artifacts.checksum import sha256_file
from models.artifacts.feature_tables import FeatureTables
from models.artifacts.repository import open_version
from tests.app.servers import running_server, wait_for
from tests.conftest import MODEL_NAME, ROOT

RNG = np.random.default_rng(7)
IDS = RNG.integers(0, 50, (5, 4)).astype(np.int32)
FEATURES = RNG.normal(0, 1, (5, 3)).astype(np.float16)


def expected(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model run directly by ONNX Runtime, or by OpenVINO at FP32 for IR."""
    if path.suffix == ".xml":
        import openvino as ov

        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        result = compiled(inputs)
        return {port.get_any_name(): np.asarray(result[port]) for port in compiled.outputs}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    values = session.run(None, inputs)
    return {o.name: np.asarray(v) for o, v in zip(session.get_outputs(), values, strict=True)}


@pytest.fixture(scope="module")
def repository(built_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plain-repository")
    (root / MODEL_NAME).symlink_to(built_repository / MODEL_NAME, target_is_directory=True)
    two_headed_ranker(root / "ranker" / "1" / "model.onnx")
    two_headed_ranker(root / "spare" / "1" / "model.onnx")
    to_openvino_ir(root / "ranker" / "1" / "model.onnx", root / "ranker-ir" / "1" / "model.xml")
    fixed_shape_model(root / "fixed" / "1" / "model.onnx")
    return root


@pytest.fixture(scope="module")
def explicit_server(repository: Path) -> Iterator[str]:
    log = repository.parent / "explicit-server.log"
    settings = {"MODEL_CONTROL__MODE": "explicit", "ADMISSION__DEFAULT_TIMEOUT_MS": "10000"}
    with running_server(repository, settings, log) as (_, url):
        yield url


def client_for(url: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=60)


def ranker_inputs(binary: bool) -> list[triton.InferInput]:
    ids = triton.InferInput("ids", list(IDS.shape), "INT32")
    ids.set_data_from_numpy(IDS, binary_data=binary)
    features = triton.InferInput("features", list(FEATURES.shape), "FP16")
    features.set_data_from_numpy(FEATURES, binary_data=binary)
    return [ids, features]


@pytest.mark.parametrize("model", ["ranker", "ranker-ir"])
@pytest.mark.parametrize("binary", [True, False])
def test_a_plain_model_answers_what_its_runtime_computes(
    explicit_server: str, repository: Path, model: str, binary: bool
) -> None:
    client = client_for(explicit_server)
    file = next(p for p in (repository / model / "1").iterdir() if p.suffix in (".onnx", ".xml"))
    want = expected(file, {"ids": IDS, "features": FEATURES})
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("ctr", "cvr")]
    result = client.infer(model, ranker_inputs(binary), outputs=outputs)
    ctr, cvr = result.as_numpy("ctr"), result.as_numpy("cvr")
    assert ctr is not None and cvr is not None
    assert ctr.dtype == np.float32 and ctr.shape == (5,)
    assert cvr.dtype == np.float16 and cvr.shape == (5, 2)
    np.testing.assert_allclose(ctr, want["ctr"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cvr.astype(np.float32), want["cvr"].astype(np.float32), atol=2e-3)
    only_cvr = client.infer(model, ranker_inputs(binary), outputs=outputs[1:])
    assert only_cvr.as_numpy("ctr") is None and only_cvr.as_numpy("cvr") is not None


def test_the_graph_is_the_config(explicit_server: str) -> None:
    client = client_for(explicit_server)
    metadata = client.get_model_metadata("ranker")
    assert metadata["inputs"] == [
        {"name": "ids", "datatype": "INT32", "shape": [-1, 4]},
        {"name": "features", "datatype": "FP16", "shape": [-1, 3]},
    ]
    assert [o["name"] for o in metadata["outputs"]] == ["ctr", "cvr"]
    config = client.get_model_config("ranker")
    assert config["max_batch_size"] > 0 and "dynamic_batching" in config
    assert config["input"][1] == {"name": "features", "data_type": "TYPE_FP16", "dims": [3]}
    ir = client.get_model_config("ranker-ir")
    assert ir["platform"] == "openvino"
    assert [g["backend"] for g in ir["instance_group"]] == ["openvino-cpu"]  # ORT cannot run IR
    fixed = client.get_model_config("fixed")
    assert fixed["max_batch_size"] == 0 and "dynamic_batching" not in fixed
    assert fixed["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [2, 3]}]


def test_a_model_without_a_batch_axis_is_served_whole(explicit_server: str) -> None:
    x = np.array([[1, -2, 3], [-4, 5, 6]], dtype=np.float32)
    with httpx.Client(base_url=explicit_server, timeout=30) as http:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3],
                            "data": x.ravel().tolist()}]}  # fmt: skip
        answer = http.post("/v2/models/fixed/infer", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0] == {
            "name": "y", "datatype": "FP32", "shape": [2], "data": [4.0, 11.0]
        }  # fmt: skip
        body["inputs"][0]["shape"] = [1, 2, 3]
        wrong = http.post("/v2/models/fixed/infer", json=body)
        assert wrong.status_code == 400 and "inputs.x.shape" in wrong.json()["error"]
        bytes_input = {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}
        refused = http.post("/v2/models/fixed/infer", json=bytes_input)
        assert refused.status_code == 400 and "inputs[0].datatype: BYTES" in refused.json()["error"]


def test_the_built_model_still_serves_v1_and_v2(explicit_server: str) -> None:
    with httpx.Client(base_url=explicit_server, timeout=30) as http:
        ranked = http.post("/v1/rank", json={"user_id": 1, "k": 3})
        assert ranked.status_code == 200 and len(ranked.json()["items"]) == 3
        metadata = http.get(f"/v2/models/{MODEL_NAME}").json()
        assert [i["name"] for i in metadata["inputs"]] == ["categorical", "dense"]
        unknown = http.get("/v2/models/nope")
        assert unknown.status_code == 404 and "ranker" in unknown.json()["error"]


def test_index_unload_and_load_through_tritonclient(explicit_server: str) -> None:
    client = client_for(explicit_server)
    index = {row["name"]: row for row in client.get_model_repository_index()}
    assert set(index) == {MODEL_NAME, "ranker", "ranker-ir", "fixed", "spare"}
    assert index["spare"]["state"] == "READY" and index["spare"]["version"] == "1"
    client.infer("spare", ranker_inputs(True))
    assert 'model="spare"' in httpx.get(f"{explicit_server}/metrics").text
    client.unload_model("spare")
    assert not client.is_model_ready("spare")
    deadline = time.monotonic() + 10  # the model's series go once its sessions closed
    while 'model="spare"' in httpx.get(f"{explicit_server}/metrics").text:
        assert time.monotonic() < deadline, "an unloaded model's metric series stayed"
        time.sleep(0.1)
    with pytest.raises(InferenceServerException, match="not served"):
        client.infer("spare", ranker_inputs(True))
    index = {row["name"]: row for row in client.get_model_repository_index()}
    assert index["spare"]["state"] == "UNAVAILABLE" and index["spare"]["reason"] == "unloaded"
    client.load_model("spare")
    assert client.is_model_ready("spare")
    assert client.infer("spare", ranker_inputs(True)).as_numpy("ctr") is not None


async def hammer(url: str, body: dict[str, object], seconds: float,
                 answers: list[httpx.Response], workers: int = 8) -> None:  # fmt: skip
    """`workers` clients on loopback sending the body back to back for `seconds` (bounded),
    each answer appended to `answers` as it comes."""
    stop_at = time.monotonic() + seconds

    async def worker() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            while time.monotonic() < stop_at and len(answers) < 50_000:
                answers.append(await http.post("/v2/models/spare/infer", json=body))

    await asyncio.gather(*(worker() for _ in range(workers)))


def test_loads_and_unloads_of_one_model_lose_nothing_on_another_under_open_loop_load(
    explicit_server: str, built_repository: Path
) -> None:
    """/v1/rank offered at a fixed rate (open loop: requests do not wait for answers) while an
    OpenVINO IR model is unloaded and loaded again and again: every request answered 200."""
    bodies = rank_bodies(open_version(built_repository, MODEL_NAME), 100)
    port = int(explicit_server.rsplit(":", 1)[1])
    spec = loadgen.LoadSpec("127.0.0.1", port, bodies, "/v1/rank", rate=150, seconds=6,
                            connections=64)  # fmt: skip
    result: list[loadgen.LoadResult] = []
    offered = threading.Thread(target=lambda: result.append(loadgen.run(spec)))
    offered.start()
    swaps = 0
    with httpx.Client(base_url=explicit_server, timeout=30) as http:
        while offered.is_alive() and swaps < 40:
            for step in ("unload", "load"):
                answer = http.post(f"/v2/repository/models/ranker-ir/{step}")
                assert answer.status_code == 200, answer.text
            swaps += 1
    offered.join(timeout=60)
    (load,) = result
    assert swaps >= 3, swaps
    assert load.statuses == [200] * load.offered, Counter(load.statuses)
    print(f"open loop: {load.offered} requests, all 200, over {swaps} unloads and loads")
    assert http_ready(explicit_server, "ranker-ir")


def http_ready(url: str, model: str) -> bool:
    return httpx.get(f"{url}/v2/models/{model}/ready", timeout=10).status_code == 200


def test_a_new_version_swaps_in_under_load_and_broken_ones_are_refused(
    explicit_server: str, repository: Path
) -> None:
    model = repository / "spare"
    two_headed_ranker(model / "2" / "model.onnx", scale=3.0)
    inputs: dict[str, np.ndarray] = {"ids": IDS, "features": FEATURES}
    want = {v: expected(model / v / "model.onnx", inputs)["ctr"] for v in ("1", "2")}
    assert not np.allclose(want["1"], want["2"], atol=1e-3)
    body = {"inputs": [
        {"name": "ids", "datatype": "INT32", "shape": [5, 4], "data": IDS.ravel().tolist()},
        {"name": "features", "datatype": "FP16", "shape": [5, 3],
         "data": FEATURES.astype(float).ravel().tolist()},
    ], "outputs": [{"name": "ctr"}]}  # fmt: skip
    client = client_for(explicit_server)

    # The load runs on its own thread and event loop: tritonclient's gevent stays on this one.
    answers: list[httpx.Response] = []
    load = threading.Thread(target=lambda: asyncio.run(hammer(explicit_server, body, 4.0, answers)))
    load.start()
    wait_for(lambda: len(answers) >= 20, 30, "20 answers from version 1 before the load")
    client.load_model("spare")
    load.join(timeout=60)
    assert answers and all(a.status_code == 200 for a in answers), {a.status_code for a in answers}
    seen = {"1": 0, "2": 0}
    for answer in answers:
        document = answer.json()
        version = document["model_version"]
        np.testing.assert_allclose(document["outputs"][0]["data"], want[version], rtol=1e-5)
        seen[version] += 1
    assert seen["1"] > 0 and seen["2"] > 0, seen
    print(f"swap under load: {len(answers)} answers, all 200, by version {seen}")
    assert client.get_model_metadata("spare")["versions"] == ["2"]

    broken = model / "3" / "model.onnx"
    broken.parent.mkdir()
    good = (model / "2" / "model.onnx").read_bytes()
    broken.write_bytes(good[: len(good) // 2])
    with pytest.raises(InferenceServerException, match=r"spare/3/model\.onnx") as refused:
        client.load_model("spare")
    assert str(repository) not in str(refused.value)  # named within the repository
    still = client.infer("spare", ranker_inputs(True))
    assert still.get_response()["model_version"] == "2"
    index = {row["name"]: row for row in client.get_model_repository_index()}
    assert index["spare"]["state"] == "READY" and "model.onnx" in index["spare"]["reason"]
    assert str(repository) not in index["spare"]["reason"]

    broken.write_bytes(good)
    (broken.parent / "model.onnx.sha256").write_text("0" * 64 + "  model.onnx\n")
    with pytest.raises(InferenceServerException, match="SHA-256"):
        client.load_model("spare")
    assert client.infer("spare", ranker_inputs(True)).get_response()["model_version"] == "2"
    (broken.parent / "model.onnx.sha256").write_text(f"{sha256_file(broken)}  model.onnx\n")
    client.load_model("spare")
    assert client.get_model_metadata("spare")["versions"] == ["3"]
    metrics = httpx.get(f"{explicit_server}/metrics").text
    assert 'recsys_model_load_failures_total{model="spare"} 2.0' in metrics


def test_poll_mode_picks_up_a_new_version(repository: Path, tmp_path: Path) -> None:
    root = tmp_path / "repository"
    two_headed_ranker(root / "polled" / "1" / "model.onnx")
    settings = {"MODEL_CONTROL__MODE": "poll", "MODEL_CONTROL__POLL_SECONDS": "0.3"}
    with running_server(root, settings, tmp_path / "server.log") as (_, url):
        client = client_for(url)
        with pytest.raises(InferenceServerException, match="explicit"):
            client.unload_model("polled")
        staging = tmp_path / "staging"
        two_headed_ranker(staging / "model.onnx", scale=2.0)
        staging.rename(root / "polled" / "2")  # whole, at once, as a deployment would
        deadline = time.monotonic() + 20
        while client.get_model_metadata("polled")["versions"] != ["2"]:
            assert time.monotonic() < deadline, "poll mode never served version 2"
            time.sleep(0.2)
        answer = client.infer("polled", ranker_inputs(True))
        assert answer.get_response()["model_version"] == "2"


def start_up(root: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env |= {"PYTHONPATH": str(ROOT), "RECSYS_MODEL__REPOSITORY": str(root)}
    return subprocess.run(
        [sys.executable, "-m", "app", "--port", "0"],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip


def test_start_up_mistakes_are_one_line_naming_the_file(tmp_path: Path) -> None:
    root = tmp_path / "repository"
    model = two_headed_ranker(root / "mine" / "1" / "model.onnx")
    (root / "mine" / "config.toml").write_text("max_batch_rows = 64\nmax_batch_size = 8\n")
    result = start_up(root)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "mine/config.toml: max_batch_size: unknown key" in result.stderr

    (root / "mine" / "config.toml").write_text("[inputs.ids]\ndims = [5]\n")
    result = start_up(root)
    assert result.returncode == 2 and "inputs.ids.dims: [5] does not fit" in result.stderr

    (root / "mine" / "config.toml").unlink()
    model.write_bytes(model.read_bytes()[:100])
    result = start_up(root)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "mine/1/model.onnx: not a model ONNX Runtime can load" in result.stderr

    shutil.rmtree(root / "mine" / "1")
    (root / "mine" / "1").mkdir()
    result = start_up(root)
    assert result.returncode == 2 and "holds no model.onnx or model.xml" in result.stderr


@pytest.fixture(scope="module")
def versions_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("versions-repository")
    for number in (1, 2, 3):
        two_headed_ranker(root / "picked" / str(number) / "model.onnx", scale=float(number))
        two_headed_ranker(root / "every" / str(number) / "model.onnx", scale=float(number))
    (root / "picked" / "config.toml").write_text(
        'max_batch_rows = 16\nmax_queue_delay_ms = 0.5\ndevices = ["cpu-onnxruntime"]\n'
        "[version_policy]\nspecific = [1, 3]\n"
    )
    (root / "every" / "config.toml").write_text("[version_policy]\nall = true\n")
    two_headed_ranker(root / "hurried" / "1" / "model.onnx")
    (root / "hurried" / "config.toml").write_text("default_timeout_ms = 0.001\n")
    with running_server(root, {}, root / "server.log") as (_, url):
        yield url, root


def test_version_policies_and_versioned_routes(versions_server: tuple[str, Path]) -> None:
    url, root = versions_server
    client = client_for(url)
    assert client.get_model_metadata("picked")["versions"] == ["1", "3"]
    assert client.get_model_metadata("every")["versions"] == ["1", "2", "3"]
    inputs: dict[str, np.ndarray] = {"ids": IDS, "features": FEATURES}
    for number in ("1", "3"):
        answer = client.infer("picked", ranker_inputs(True), model_version=number)
        assert answer.get_response()["model_version"] == number
        want = expected(root / "picked" / number / "model.onnx", inputs)["ctr"]
        np.testing.assert_allclose(answer.as_numpy("ctr"), want, rtol=1e-5, atol=1e-6)
    latest = client.infer("picked", ranker_inputs(True))
    assert latest.get_response()["model_version"] == "3"
    with pytest.raises(InferenceServerException, match="no version '2'"):
        client.infer("picked", ranker_inputs(True), model_version="2")
    assert client.get_model_metadata("picked", model_version="1")["name"] == "picked"
    config = client.get_model_config("picked")
    assert config["max_batch_size"] == 16
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": 500}
    assert [g["name"] for g in config["instance_group"]] == ["cpu-onnxruntime"]
    every = client.get_model_config("every")
    assert [g["name"] for g in every["instance_group"]] == ["cpu-openvino", "cpu-onnxruntime"]
    too_many = np.zeros((17, 4), dtype=np.int32)
    ids = triton.InferInput("ids", [17, 4], "INT32")
    ids.set_data_from_numpy(too_many)
    features = triton.InferInput("features", [17, 3], "FP16")
    features.set_data_from_numpy(np.zeros((17, 3), dtype=np.float16))
    split = client.infer("picked", [ids, features])  # more rows than a batch: split, reassembled
    ctr = split.as_numpy("ctr")
    assert ctr is not None and ctr.shape == (17,)


def test_a_models_own_default_deadline_applies(versions_server: tuple[str, Path]) -> None:
    client = client_for(versions_server[0])
    with pytest.raises(InferenceServerException, match="cannot finish within 0 ms"):
        client.infer("hurried", ranker_inputs(True))  # 1 us: predicted to miss, refused at once
    assert client.infer("picked", ranker_inputs(True)).as_numpy("ctr") is not None


def ranked_repository(root: Path) -> tuple[Path, FeatureTables]:
    """A plain user-sized ranker with feature tables and a ranking spec: 3 user and 5 item
    categorical fields make its `cat`, 2 item dense fields and 2 request values its `dense`."""
    version = root / "ranked" / "1"
    user_sized_ranker(version / "model.onnx", vocabulary=500)
    rng = np.random.default_rng(3)
    tables = FeatureTables(
        user_ids=np.array([f"u{i}" for i in range(20)]),
        user_fields=("age", "region", "device"),
        user_categorical=rng.integers(0, 500, (21, 3)),
        item_ids=np.array([f"i{i}" for i in range(50)]),
        item_fields=("genre", "brand", "shop", "price_band", "age_band"),
        item_categorical=rng.integers(0, 500, (51, 5)),
        dense_fields=("popularity", "freshness"),
        item_dense=rng.random((51, 2)).astype(np.float32),
    )
    tables.save(version / "feature_tables.npz")
    (root / "ranked" / "config.toml").write_text(
        "[ranking]\nrequest = { hour = 2 }\n[ranking.inputs]\n"
        'cat = ["user.categorical", "item.categorical"]\n'
        'dense = ["item.dense", "request.hour"]\n'
    )
    return version, tables


def test_a_plain_model_with_a_ranking_spec_serves_v1_rank(tmp_path: Path) -> None:
    version, tables = ranked_repository(tmp_path)
    settings = {"MODEL__NAME": "ranked"}
    with (
        running_server(tmp_path, settings, tmp_path / "server.log") as (_, url),
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        body = {"user_id": "u3", "candidates": ["i1", "i7", "i9", "nope"], "k": 4,
                "context": {"hour": [0.25, 0.5]}}  # fmt: skip
        answer = http.post("/v1/rank", json=body)
        assert answer.status_code == 200, answer.text
        document = answer.json()
        assert document["model_name"] == "ranked" and document["unknown_items"] == ["nope"]
        items = tables.item_rows(["i1", "i7", "i9", "nope"])
        user = tables.user_rows(["u3"])[0]
        cat = np.concatenate([np.repeat(tables.user_categorical[[user]], 4, axis=0),
                              tables.item_categorical[items]], axis=1)  # fmt: skip
        dense = np.concatenate([tables.item_dense[items], np.tile([0.25, 0.5], (4, 1))], axis=1)
        session = ort.InferenceSession(str(version / "model.onnx"))
        want = session.run(None, {"cat": cat, "dense": dense.astype(np.float32)})[0]
        got = {item["item_id"]: item["score"] for item in document["items"]}
        for item_id, score in zip(["i1", "i7", "i9", "nope"], want, strict=True):
            assert got[item_id] == pytest.approx(float(score), abs=1e-5)
        missing = http.post("/v1/rank", json={"user_id": "u3", "k": 2})
        assert missing.status_code == 422 and "context.hour: required" in missing.json()["error"]
        score = http.post("/v1/score", json={"categorical": [[1] * 8], "dense": [[0.0] * 4]})
        assert score.status_code == 404 and "plain model" in score.json()["error"]


def test_a_ranking_spec_that_does_not_fit_stops_start_up(tmp_path: Path) -> None:
    ranked_repository(tmp_path)
    config = tmp_path / "ranked" / "config.toml"
    config.write_text(config.read_text().replace("hour = 2", "hour = 3"))
    result = start_up(tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "ranked/config.toml: ranking.inputs.dense: its parts are 5 wide, the input 4" in (
        result.stderr
    )

"""Canary versions ([canary] splits): the pure, sticky split; and a real server serving two
versions of the built model, whose /v1/rank (keyed by user) and V2 infer (keyed by the
`routing_key` parameter, over REST and gRPC with tritonclient) send the canary its share, the
same key always to the same version, each version's statistics counting what it served."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from app.dataplane.canary import bucket, to_canary
from bench.processes import ADMIN_HEADERS, ADMIN_TOKEN
from models.artifacts import repository
from tests.app.servers import free_port, running_server, wait_for
from tests.conftest import MODEL_NAME

pytestmark = pytest.mark.timeout(300)
DEVICES = [{"name": "cpu", "backend": "onnxruntime-cpu"}]


def test_the_split_is_sticky_and_takes_its_share() -> None:
    keys = [f"user-{i}" for i in range(20_000)]
    assert [bucket(k) for k in keys[:50]] == [bucket(k) for k in keys[:50]]  # the same each time
    assert all(0 <= bucket(k) < 1 for k in keys[:1000])
    share = sum(to_canary(k, 0.2) for k in keys) / len(keys)
    assert 0.19 < share < 0.21, share  # binomial sd 0.003
    assert not any(to_canary(k, 0.0) for k in keys[:1000])
    assert all(to_canary(k, 1.0) for k in keys[:1000])
    assert not to_canary(None, 1.0)  # no key: the stable version
    # Growing the share only moves keys to the canary, never back.
    assert all(to_canary(k, 0.3) for k in keys if to_canary(k, 0.2))


@pytest.fixture
def two_versions(built_repository: Path, tmp_path: Path) -> Path:
    """The built model as versions 1 and 2 (links to the same files, each manifest naming its
    version), both served."""
    root = tmp_path / "repository"
    built = built_repository / MODEL_NAME / "1"
    for number in (1, 2):
        folder = root / MODEL_NAME / str(number)
        folder.mkdir(parents=True)
        for file in built.iterdir():
            if file.name != "manifest.json":
                (folder / file.name).symlink_to(file)
        manifest = json.loads((built / "manifest.json").read_text())
        (folder / "manifest.json").write_text(json.dumps({**manifest, "model_version": number}))
    (root / MODEL_NAME / "config.toml").write_text("[version_policy]\nall = true\n")
    return root


def v2_inputs(root: Path) -> list[dict[str, Any]]:
    """Two real rows of the built model as V2 JSON inputs."""
    version = repository.open_version(root, MODEL_NAME, 1)
    split = version.load_test_split()
    arrays = version.tables.assemble(split.user_rows[:2], split.item_rows[:2])
    return [{"name": n, "datatype": "INT64" if a.dtype == np.int64 else "FP32",
             "shape": list(a.shape), "data": a.ravel().tolist()}
            for n, a in arrays.items()]  # fmt: skip


def version_of(url: str, inputs: list[dict[str, Any]], key: str | None) -> str:
    """The version that answers a V2 request with this routing key (None: without one)."""
    body: dict[str, Any] = {"inputs": inputs}
    if key is not None:
        body["parameters"] = {"routing_key": key}
    answer = httpx.post(f"{url}/v2/models/{MODEL_NAME}/infer", json=body)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["model_version"])


def version_counts(url: str) -> dict[str, int]:
    """Each version's own statistics: the requests it served."""
    counts = {}
    for version in ("1", "2"):
        stats = httpx.get(f"{url}/v2/models/{MODEL_NAME}/versions/{version}/stats").json()
        counts[version] = int(stats["model_stats"][0]["inference_stats"]["success"]["count"])
    return counts


@pytest.mark.parametrize("workers", [1, 2])
def test_a_server_splits_traffic_by_key(workers: int, two_versions: Path, tmp_path: Path) -> None:
    """With workers, each worker routes (the split is a pure function of the key)."""
    grpc_port = free_port()
    settings = {"CANARY__SPLITS": json.dumps({MODEL_NAME: {"version": 2, "share": 0.25}}),
                "GRPC__PORT": str(grpc_port), "SERVER__WORKERS": str(workers)}  # fmt: skip
    users = range(1, 201)
    expected = {u: "2" if to_canary(str(u), 0.25) else "1" for u in users}
    with running_server(two_versions, settings, tmp_path / "server.log", DEVICES) as (_, url):
        with httpx.Client(base_url=url, timeout=30) as client:
            for user in users:  # /v1/rank: keyed by the user id
                answer = client.post("/v1/rank", json={"user_id": user, "k": 3}).json()
                assert str(answer["model_version"]) == expected[user], (user, answer)
            again = client.post("/v1/rank", json={"user_id": 7, "k": 3}).json()
            assert str(again["model_version"]) == expected[7]  # sticky
            canary = sum(v == "2" for v in expected.values())
            counted = {"1": 201 - canary, "2": canary}  # workers: the engine's status lags a little
            wait_for(lambda: version_counts(url) == counted, 10, f"statistics counting {counted}")
            assert 0.15 < canary / 200 < 0.35, canary

            # V2 over REST: the routing_key parameter; none: the stable version; a named
            # version: that one.
            inputs = v2_inputs(two_versions)
            canary_key = next(str(u) for u in users if expected[u] == "2")
            for parameters, served in (({"routing_key": canary_key}, "2"),
                                       ({"routing_key": "1"} if expected[1] == "1" else {}, "1"),
                                       ({}, "1")):  # fmt: skip
                body = {"inputs": inputs, "parameters": parameters}
                answer = client.post(f"/v2/models/{MODEL_NAME}/infer", json=body).json()
                assert answer["model_version"] == served, (parameters, answer)
            named = client.post(
                f"/v2/models/{MODEL_NAME}/versions/1/infer",
                json={"inputs": inputs, "parameters": {"routing_key": canary_key}},
            )
            assert named.json()["model_version"] == "1"  # a named version is not re-routed
            bad = client.post(
                f"/v2/models/{MODEL_NAME}/infer",
                json={"inputs": inputs, "parameters": {"routing_key": 7}},
            )
            assert bad.status_code == 400 and "routing_key" in bad.json()["error"], bad.text

        # gRPC with tritonclient: the same parameter, the same version.
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        tensors = []
        for entry in inputs:
            array = np.array(entry["data"]).reshape(entry["shape"])
            array = array.astype(np.int64 if entry["datatype"] == "INT64" else np.float32)
            tensor = grpcclient.InferInput(entry["name"], entry["shape"], entry["datatype"])
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        keyed: list[tuple[dict[str, str] | None, str]] = [({"routing_key": canary_key}, "2"),
                                                          (None, "1")]  # fmt: skip
        for options, served in keyed:
            result = client.infer(MODEL_NAME, tensors, parameters=options)
            assert result.get_response().model_version == served, options


def test_a_new_version_shadows_first_then_takes_a_share(two_versions: Path, tmp_path: Path) -> None:
    """[canary] share 0 and [shadow] versions: version 2 scores copies of version 1's requests,
    compared and judged, while every answer still comes from version 1 and version 2's own
    statistics count nothing; then the repository API gives it a share, promotes it, and takes
    the split back, each step logged."""
    settings = {"CANARY__SPLITS": json.dumps({MODEL_NAME: {"version": 2, "share": 0.0}}),
                "SHADOW__VERSIONS": json.dumps({MODEL_NAME: 2}), "SHADOW__SAMPLE_FRACTION": "1",
                "SHADOW__MIN_REQUESTS": "10", "FAULTS__ADMIN_TOKEN": ADMIN_TOKEN}  # fmt: skip
    with running_server(two_versions, settings, tmp_path / "server.log", DEVICES) as (_, url):
        with httpx.Client(base_url=url, timeout=30) as client:
            for user in range(1, 21):
                answer = client.post("/v1/rank", json={"user_id": user, "k": 3}).json()
                assert answer["model_version"] == 1, answer

            def report() -> dict[str, Any]:
                got: dict[str, Any] = client.get(
                    f"/v2/models/{MODEL_NAME}/versions/1/shadow"
                ).json()
                return got

            wait_for(lambda: report()["requests"]["compared"] == 20, 30, "20 requests compared")
            wait_for(lambda: report()["verdict"] != "pending", 30, "a verdict")
            shadow = report()
        assert shadow["candidate"] == "version 2" and shadow["verdict"] == "passes", shadow
        figures = shadow["outputs"]["probability"]
        assert (
            figures["spearman"]["min"] == pytest.approx(1.0) and figures["max_abs_difference"] == 0
        )
        assert version_counts(url) == {"1": 20, "2": 0}
        # Then a share, then promotion, through the repository API (the token it needs).
        canary = f"{url}/v2/repository/models/{MODEL_NAME}/canary"
        assert httpx.post(canary, json={"version": 2, "share": 0.25}).status_code == 401
        with httpx.Client(timeout=30, headers=ADMIN_HEADERS) as admin:
            answer = admin.post(canary, json={"version": 2, "share": 0.25})
            assert answer.status_code == 200, answer.text
            assert answer.json()["split"] == {"version": 2, "share": 0.25, "promoted": False}
            for user in range(1, 41):
                served = httpx.post(f"{url}/v1/rank", json={"user_id": user, "k": 3}).json()
                assert str(served["model_version"]) == ("2" if to_canary(str(user), 0.25) else "1")
            assert admin.post(canary, json={"version": 2, "promoted": True}).status_code == 200
            canary_user = next(str(u) for u in range(1, 100) if to_canary(str(u), 0.25))
            for user in (1, 2, 3):
                served = httpx.post(f"{url}/v1/rank", json={"user_id": user, "k": 3}).json()
                assert served["model_version"] == 2  # every key
            inputs = v2_inputs(two_versions)
            assert version_of(url, inputs, None) == "2"  # and a request with none
            assert admin.get(canary).json()["split"]["promoted"] is True
            back = admin.post(canary, json={"version": 2, "share": 0})  # rolled back
            assert back.status_code == 200 and version_of(url, inputs, canary_user) == "1"
            assert admin.delete(canary).status_code == 200  # no split: the latest version
            assert admin.get(canary).json()["split"] is None
            assert version_of(url, inputs, "user-9") == "2"
            refused = admin.post(canary, json={"version": 3, "share": 0.5})
            assert refused.status_code == 400 and "version: 3 is not served" in refused.text
            refused = admin.post(canary, json={"version": 2, "share": 2})
            assert refused.status_code == 400 and "share" in refused.text
        log = (tmp_path / "server.log").read_text()
        assert "canary: movielens-dcnv2 version 2 takes 25.0%" in log
        assert "canary: movielens-dcnv2 version 2 promoted" in log
        assert "canary: movielens-dcnv2: split removed" in log


def test_a_shadow_version_that_is_not_served_stops_start_up(
    two_versions: Path, tmp_path: Path
) -> None:
    settings = {"SHADOW__VERSIONS": json.dumps({MODEL_NAME: 3})}
    with (pytest.raises(RuntimeError) as raised,
          running_server(two_versions, settings, tmp_path / "server.log", DEVICES)):  # fmt: skip
        pass
    assert f"shadow.versions.{MODEL_NAME}: version 3 is not served (serving 1, 2" in str(
        raised.value
    )

"""deploy/kserve/: the ClusterServingRuntime's container started the way KServe starts it (its
args with `{{.Name}}` filled in, its env, `/mnt/models` filled as the storage initializer fills it)
serves the InferenceService's model over V2, whether `/mnt/models` holds one model file, one
model's version folders, or a repository. (No cluster here: the objects are validated against
KServe's own API types, tests/deploy/crd_schemas.py, and checked for the fields KServe reads.)"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.repository_layout import layout
from bench import processes
from models.artifacts.repository import open_version
from tests.conftest import MODEL_NAME, ROOT
from tests.deploy import crd_schemas

pytestmark = pytest.mark.timeout(300)
KSERVE = ROOT / "deploy" / "kserve"
MOUNT = "/mnt/models"


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((KSERVE / name).read_text())
    return document


def test_the_runtime_serves_what_the_inference_service_asks_for() -> None:
    runtime, service = load("cluster-serving-runtime.yaml"), load("inference-service.yaml")
    assert runtime["kind"] == "ClusterServingRuntime"
    assert service["kind"] == "InferenceService"
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {
        f["name"] for f in runtime["spec"]["supportedModelFormats"]
    }
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    container = runtime["spec"]["containers"][0]
    assert container["name"] == "kserve-container"  # the name KServe looks for
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["RECSYS_MODEL__REPOSITORY"] == MOUNT
    assert container["ports"][0]["containerPort"] == int(env["RECSYS_SERVER__PORT"]) == 8080
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/port"] == "8080"


def test_the_objects_validate_against_kserves_own_types() -> None:
    runtime, service = load("cluster-serving-runtime.yaml"), load("inference-service.yaml")
    crd_schemas.validate_kserve(runtime)
    crd_schemas.validate_kserve(service)
    container = runtime["spec"]["containers"][0]
    for broken in (
        {**runtime, "spec": {**runtime["spec"], "protocolVersion": ["v2"]}},  # protocolVersions
        {**runtime, "spec": {**runtime["spec"], "containers": [{**container, "arg": []}]}},
        {**service, "spec": {"predictor": {"model": {"storageURI": "gs://b/m"}}}},
    ):
        with pytest.raises(crd_schemas.SchemaError):
            crd_schemas.validate_kserve(broken)


def kserve_command(mount: Path, port: int, name: str) -> tuple[list[str], dict[str, str]]:
    """The runtime's container as KServe runs it, on loopback: `{{.Name}}` is the
    InferenceService's name, /mnt/models the folder the storage initializer filled."""
    container = load("cluster-serving-runtime.yaml")["spec"]["containers"][0]
    args = [a.replace("{{.Name}}", name) for a in container.get("args", [])]
    env = {e["name"]: e["value"].replace(MOUNT, str(mount)) for e in container["env"]}
    env |= {"RECSYS_SERVER__HOST": "127.0.0.1", "RECSYS_SERVER__PORT": str(port),
            "RECSYS_GRPC__PORT": "0"}  # fmt: skip
    return [sys.executable, "-m", "app", *args], {**os.environ, "PYTHONPATH": str(ROOT), **env}


@pytest.mark.parametrize("filled", ["file", "model", "repository"])
def test_a_server_started_as_kserve_starts_it_serves_the_model(
    filled: str, built_repository: Path, tmp_path: Path
) -> None:
    version = open_version(built_repository, MODEL_NAME, None)
    mount = tmp_path / "mnt-models"
    name = "my-ranker"
    folder = {"file": mount, "model": mount / "1", "repository": mount / name / "1"}[filled]
    folder.mkdir(parents=True)  # one model.onnx; its version folder; a repository of models
    shutil.copy(version.variant_path("pruned-fp32"), folder / "model.onnx")
    assert layout(mount) == filled
    port = processes.free_port()
    command, env = kserve_command(mount, port, name)
    with processes.running(command, port, env, tmp_path / "server.log") as (_, url):
        assert httpx.get(f"{url}/v2/models/{name}/ready", timeout=10).status_code == 200
        body = {"inputs": [
            {"name": "categorical", "datatype": "INT64", "shape": [1, 7],
             "data": [1, 3, 2, 20, 100, 50, 12]},
            {"name": "dense", "datatype": "FP32", "shape": [1, 19], "data": [0.0] * 19},
        ]}  # fmt: skip
        answer = httpx.post(f"{url}/v2/models/{name}/infer", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["shape"] == [1]


def test_a_repository_is_served_as_it_is(tmp_path: Path) -> None:
    assert layout(tmp_path / "missing") == "repository"
    assert layout(tmp_path) == "repository"  # empty: the repository check reports it
    (tmp_path / "a" / "1").mkdir(parents=True)
    (tmp_path / "a" / "1" / "model.onnx").write_bytes(b"")
    assert layout(tmp_path) == "repository"
    assert layout(tmp_path / "a") == "model"
    assert layout(tmp_path / "a" / "1") == "file"

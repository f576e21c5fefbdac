"""Choosing each device's variant from the manifest, and refusing what the device cannot run;
an either-CPU device planned on both runtimes and served on the faster."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import httpx
import pytest

from app.dataplane.devices import choose_variant, plan_devices
from bench.plain_models import user_sized_ranker
from config.settings import load_settings
from models.artifacts.model_config import ModelConfig
from models.artifacts.repository import RepositoryError
from models.artifacts.servable import ServableVersion, open_servable
from scheduler.settings import DeviceSettings
from tests.app.servers import running_server
from tests.conftest import MODEL_NAME


@pytest.fixture(scope="module")
def version(built_repository: Path) -> ServableVersion:
    return open_servable(built_repository, MODEL_NAME, 1)


def test_default_variants_follow_the_manifest(version: ServableVersion) -> None:
    assert version.built is not None
    manifest = version.built.manifest
    cpu = choose_variant(version, DeviceSettings(name="cpu", backend="openvino-cpu"))
    gpu = choose_variant(version, DeviceSettings(name="gpu", backend="onnxruntime-gpu"))
    assert cpu.name == manifest.default_variants["cpu"]
    assert gpu.name == manifest.default_variants["gpu"]
    assert set(version.variants) == {v.name for v in manifest.variants if v.servable}


def test_a_variant_the_runtime_cannot_serve_is_refused(version: ServableVersion) -> None:
    device = DeviceSettings(name="ort", backend="onnxruntime-cpu", variant="pruned-openvino-int8")
    with pytest.raises(ValueError, match=r"devices\.ort\.variant: .*'pruned-openvino-int8' is not"):
        choose_variant(version, device)
    with pytest.raises(ValueError, match="no servable variant 'nope'"):
        choose_variant(version, DeviceSettings(name="x", backend="openvino-cpu", variant="nope"))


def test_a_model_config_picks_a_device_variant(built_repository: Path) -> None:
    config = ModelConfig(variants={"ort": "pruned-int8"})
    version = open_servable(built_repository, MODEL_NAME, 1, config)
    assert choose_variant(version, DeviceSettings(name="ort", backend="onnxruntime-cpu")).name == (
        "pruned-int8"
    )
    with pytest.raises(RepositoryError, match=r"variants\.ort: .* no servable variant 'nope'"):
        open_servable(built_repository, MODEL_NAME, 1, ModelConfig(variants={"ort": "nope"}))


def test_a_cpu_default_one_runtime_cannot_run_falls_back_for_it(
    built_repository: Path, tmp_path: Path
) -> None:
    """Versions built before the CPU default had to suit both runtimes could name an ONNX Runtime
    INT8 file: an OpenVINO device then serves the float variant it was derived from."""
    shutil.copytree(built_repository / MODEL_NAME, tmp_path / MODEL_NAME, symlinks=True)
    path = tmp_path / MODEL_NAME / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    int8 = next(v for v in manifest["variants"] if v["name"] == "pruned-int8")
    if not int8["servable"]:
        pytest.skip("this quick build's pruned-int8 failed its gate")
    manifest["default_variants"]["cpu"] = "pruned-int8"
    path.write_text(json.dumps(manifest))
    version = open_servable(tmp_path, MODEL_NAME, 1)
    openvino = choose_variant(version, DeviceSettings(name="ov", backend="openvino-cpu"))
    onnxruntime = choose_variant(version, DeviceSettings(name="ort", backend="onnxruntime-cpu"))
    assert (openvino.name, onnxruntime.name) == (int8["derived_from"], "pruned-int8")
    assert "is not run by this runtime" in version.default_reasons["openvino-cpu"]


def test_an_either_cpu_device_is_planned_on_each_runtime_that_runs_it(
    version: ServableVersion,
) -> None:
    settings = load_settings().model_copy(
        update={"devices": (DeviceSettings(name="cpu", backend="cpu"),)}
    )
    plan = plan_devices(version, settings)
    assert [(c.name, c.backend) for c, _ in plan] == [
        ("cpu", "onnxruntime-cpu"), ("cpu", "openvino-cpu")
    ]  # fmt: skip
    # A variant only one runtime runs: planned there alone; one neither has: refused.
    only = ModelConfig(variants={"cpu": "pruned-openvino-int8"})
    named = open_servable(version.path.parent.parent, MODEL_NAME, 1, only)
    assert [c.backend for c, _ in plan_devices(named, settings)] == ["openvino-cpu"]
    bad = settings.model_copy(update={"devices": (
        DeviceSettings(name="cpu", backend="cpu", variant="nope"),)})  # fmt: skip
    with pytest.raises(ValueError, match="no servable variant 'nope'"):
        plan_devices(version, bad)


def test_an_either_cpu_device_serves_the_faster_runtime(tmp_path: Path) -> None:
    root = tmp_path / "repository"
    user_sized_ranker(root / "ranker" / "1" / "model.onnx", vocabulary=500)
    devices = [{"name": "cpu", "backend": "cpu"}]
    with running_server(root, {}, tmp_path / "server.log", devices) as (_, url):
        (group,) = httpx.get(f"{url}/v2/models/ranker/config").json()["instance_group"]
        body = {"inputs": [
            {"name": "cat", "datatype": "INT64", "shape": [2, 8], "data": list(range(16))},
            {"name": "dense", "datatype": "FP32", "shape": [2, 4], "data": [0.5] * 8},
        ]}  # fmt: skip
        answer = httpx.post(f"{url}/v2/models/ranker/infer", json=body)
    assert answer.status_code == 200, answer.text
    timed = dict(
        re.findall(r"(onnxruntime-cpu|openvino-cpu) model ([\d.]+) ms", group["variant_reason"])
    )
    assert set(timed) == {"onnxruntime-cpu", "openvino-cpu"}, group
    assert group["backend"] == min(timed, key=lambda b: float(timed[b])), group
    assert "the faster CPU runtime here, timed at start-up" in group["variant_reason"]

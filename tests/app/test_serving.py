"""Choosing each device's variant from the manifest, and refusing what the device cannot run."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.serving import choose_variant
from models.model_config import ModelConfig
from models.repository import RepositoryError
from models.servable import ServableVersion, open_servable
from scheduler.settings import DeviceSettings
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

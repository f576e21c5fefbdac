"""The layers import one way (in `app/` a transport never imports another, the data plane no
transport or process model; the artifacts the server reads nothing of the offline pipeline), and
the engine process loads no web or RPC framework."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

# The offline pipeline's modules (flat in models/): what models/artifacts must never import.
PIPELINE = sorted(p.stem for p in (ROOT / "models").glob("*.py") if p.stem != "__init__")
# What each folder must never import (module prefixes).
FORBIDDEN = {
    "app/dataplane": ("app.http", "app.grpc", "app.workers", "app.serve", "app.assembly",
                      "fastapi", "starlette", "uvicorn", "grpc", "tritonclient"),
    "app/http": ("app.grpc", "app.workers", "app.serve", "app.assembly", "grpc"),
    "app/grpc": ("app.http", "app.workers", "app.serve", "app.assembly", "fastapi", "starlette"),
    "app/workers": ("app.http", "app.grpc", "app.serve", "fastapi", "starlette", "uvicorn"),
    "scheduler": ("app", "fastapi", "starlette", "uvicorn", "grpc"),
    # The artifacts the server reads: numpy (and the runtimes, for a graph's signature) only.
    "models/artifacts": ("app", "scheduler", "torch", "onnx", "onnxscript", "nncf", "matplotlib",
                         *(f"models.{m}" for m in PIPELINE)),
}  # fmt: skip


def imported(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_imports_go_one_way(folder: str) -> None:
    files = sorted((ROOT / folder).glob("*.py"))
    assert files, folder
    wrong = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files
        for name in imported(path)
        if any(name == banned or name.startswith(banned + ".") for banned in FORBIDDEN[folder])
    ]
    assert not wrong, wrong


def test_the_engine_process_imports_no_web_or_rpc_framework() -> None:
    """What `python -m app --role engine` imports before it serves."""
    code = (
        "import sys; import app.__main__, app.assembly, app.workers.engine; "
        "loaded = [m for m in ('fastapi', 'starlette', 'uvicorn', 'grpc', 'torch') "
        "if m in sys.modules]; assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)

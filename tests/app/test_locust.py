"""The locustfile, headless for a few seconds against the real test server: every task ran and
none failed (its response checks included). It stands alone: it imports only locust and the
standard library and runs from a folder with nothing of the project beside it."""

from __future__ import annotations

import ast
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

STANDALONE_IMPORTS = {"json", "random", "urllib", "typing", "locust", "__future__"}


def test_locustfile_imports_nothing_of_the_project() -> None:
    tree = ast.parse((ROOT / "locustfile.py").read_text())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0] for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }  # fmt: skip
    assert imported <= STANDALONE_IMPORTS, imported - STANDALONE_IMPORTS


TASK_NAMES = ["/v1/rank [candidates]", "/v1/rank [catalog]", "/v1/score", "/v2 infer"]


def test_locust_headless_run_completes_every_task_without_failures(
    server: str, tmp_path: Path
) -> None:
    shutil.copy(ROOT / "locustfile.py", tmp_path / "locustfile.py")  # nothing else beside it
    prefix = tmp_path / "locust"
    command = [
        sys.executable, "-m", "locust", "-f", "locustfile.py", "--headless",
        "--users", "4", "--spawn-rate", "4", "--run-time", "4s", "--host", server,
        "--csv", str(prefix), "--only-summary",
        "--think-min", "0.01", "--think-max", "0.05", "--catalog-weight", "2", "--v2-weight", "2",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with open(f"{prefix}_stats.csv") as stats:
        rows = {row["Name"]: row for row in csv.DictReader(stats)}
    for name in TASK_NAMES:
        assert int(rows[name]["Request Count"]) > 0, f"{name} never ran"
        assert int(rows[name]["Failure Count"]) == 0, f"{name} failed"
    assert int(rows["Aggregated"]["Request Count"]) >= 20

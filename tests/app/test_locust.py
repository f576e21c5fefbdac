"""The locustfile, headless for a few seconds against the real test server: every task ran and
none failed (its response checks included)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

TASK_NAMES = ["/v1/rank [candidates]", "/v1/rank [catalog]", "/v1/score", "/v2 infer"]


def test_locust_headless_run_completes_every_task_without_failures(
    server: str, built_repository: Path, tmp_path: Path
) -> None:
    prefix = tmp_path / "locust"
    command = [
        sys.executable, "-m", "locust", "-f", str(ROOT / "locustfile.py"), "--headless",
        "--users", "4", "--spawn-rate", "4", "--run-time", "4s", "--host", server,
        "--csv", str(prefix), "--only-summary", "--repository", str(built_repository),
        "--think-min", "0.01", "--think-max", "0.05", "--catalog-weight", "2", "--v2-weight", "2",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with open(f"{prefix}_stats.csv") as stats:
        rows = {row["Name"]: row for row in csv.DictReader(stats)}
    for name in TASK_NAMES:
        assert int(rows[name]["Request Count"]) > 0, f"{name} never ran"
        assert int(rows[name]["Failure Count"]) == 0, f"{name} failed"
    assert int(rows["Aggregated"]["Request Count"]) >= 20

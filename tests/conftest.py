"""Shared fixtures: the real MovieLens-100K files and one real (short) build of the repository."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from config.settings import load_settings
from models import features, movielens
from models.artifacts.acceleration_record import cpu_flags, cpu_model
from models.quantize import saturates_int8_pairs
from models.split import random_split

ROOT = Path(__file__).resolve().parent.parent
SHARED_MOVIELENS = ROOT.parent / "shared" / "data" / "movielens-100k"
MODEL_NAME = "movielens-dcnv2"


def pytest_report_header() -> str:
    """The CPU, since what INT8 gains and keeps depends on it (tests/models/test_quantize_cpu)."""
    saturates = saturates_int8_pairs(platform.machine(), cpu_flags())
    return f"cpu: {cpu_model()}, {os.cpu_count()} cores, VNNI: {'no' if saturates else 'yes'}"


@pytest.fixture(scope="session")
def movielens_dir() -> Path:
    """The shared copy where it exists, else the cache or PyPI, as a user gets it."""
    settings = load_settings()
    explicit = SHARED_MOVIELENS if SHARED_MOVIELENS.is_dir() else None
    return movielens.locate(explicit, ROOT / settings.data.cache_dir)


@pytest.fixture(scope="session")
def raw_movielens(movielens_dir: Path) -> movielens.MovieLens:
    return movielens.parse(movielens_dir)


@pytest.fixture(scope="session")
def encoded(raw_movielens: movielens.MovieLens) -> features.EncodedDataset:
    settings = load_settings().data
    split = random_split(
        len(raw_movielens.ratings),
        settings.validation_fraction,
        settings.test_fraction,
        settings.split_seed,
    )
    return features.encode(raw_movielens, split)


# A quick build: short timings and bootstrap, so the suite stays within CI's budget.
QUICK_BUILD_ENV = {
    "RECSYS_BENCHMARK__SECONDS_PER_CELL": "0.01",
    "RECSYS_BENCHMARK__MIN_RUNS": "2",
    "RECSYS_BENCHMARK__WARMUP_RUNS": "1",
    "RECSYS_GATE__BOOTSTRAP_ROUNDS": "50",
}


def run_cli(
    *args: str, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "models", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def built_repository(tmp_path_factory: pytest.TempPathFactory, movielens_dir: Path) -> Path:
    """`python -m models build` end to end, two epochs and one seed, into a temporary root."""
    root = tmp_path_factory.mktemp("repository")
    result = run_cli(
        "--repository", str(root), "build", "--movielens", str(movielens_dir),
        "--max-epochs", "2", "--seeds", "0", env=QUICK_BUILD_ENV,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Model repository written to" in result.stdout
    return root

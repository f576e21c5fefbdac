from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from models.artifacts import repository
from tests.conftest import MODEL_NAME, ROOT, run_cli


@pytest.fixture
def version_copy(built_repository: Path, tmp_path: Path) -> Path:
    """A private copy of the built version, for tests that damage it."""
    shutil.copytree(built_repository, tmp_path / "root")
    return tmp_path / "root"


def edit_manifest(root: Path, change: dict[str, object]) -> None:
    path = root / MODEL_NAME / "1" / repository.MANIFEST
    manifest = json.loads(path.read_text())
    manifest.update(change)
    path.write_text(json.dumps(manifest))


def test_build_writes_a_valid_version_with_the_baselines_figures(built_repository: Path) -> None:
    version = repository.open_version(built_repository, MODEL_NAME)
    manifest = version.manifest
    assert manifest.model_version == 1 and manifest.split.seed == 2025
    assert manifest.split.rows == {"train": 80_000, "validation": 10_000, "test": 10_000}
    assert [i.name for i in manifest.inputs] == ["categorical", "dense"]
    assert set(manifest.default_variants) == {"cpu", "gpu"}
    for name in manifest.default_variants.values():
        assert manifest.variant(name).servable
    baseline = manifest.variant("baseline-fp32")
    assert baseline.servable and baseline.precision == "fp32"
    assert baseline.parameters > 1_000_000 and baseline.flops_per_row > 2_000_000
    assert 0.77 < baseline.test_auc < 0.85
    executed = {(r.runtime, r.requested): r.executed for r in baseline.parity}
    assert executed[("onnxruntime", "f32")] == "f32"
    assert executed[("openvino", "f32")] == "f32"
    assert ("openvino", "default") in executed  # bf16 on AMX CPUs; recorded either way
    report = (version.path / "report.md").read_text()
    assert f"{baseline.test_auc:.4f}" in report and f"{baseline.parameters:,}" in report
    assert f"{baseline.flops_per_row:,}" in report
    split = version.load_test_split()
    assert len(split.labels) == 10_000


def test_evaluate_reproduces_the_manifest_without_torch(built_repository: Path) -> None:
    result = run_cli("--repository", str(built_repository), "evaluate")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("baseline-fp32 ")]
    assert len(lines) == 2 and all(line.endswith(" ok") for line in lines)
    assert "MISMATCH" not in result.stdout

    report = run_cli("--repository", str(built_repository), "report")
    assert report.returncode == 0 and "## Export parity" in report.stdout


# Every serving entry point: the one-process server and its transports, the engine, a worker.
SERVING_MODULES = (
    "app.__main__", "app.assembly", "app.serve", "app.http.app", "app.grpc.service",
    "app.workers.engine", "app.workers.link", "app.workers.supervisor", "models.artifacts",
    "models.artifacts.repository", "models.artifacts.servable", "models.runtime",
    "models.evaluate", "models.metrics", "models.__main__",
)  # fmt: skip


def test_serving_modules_do_not_import_torch() -> None:
    code = (
        f"import sys, importlib; [importlib.import_module(m) for m in {SERVING_MODULES!r}]; "
        "assert 'fastapi' in sys.modules and 'grpc' in sys.modules, 'not every entry point'; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_invalid_json_is_refused(version_copy: Path) -> None:
    (version_copy / MODEL_NAME / "1" / repository.MANIFEST).write_text("{not json")
    with pytest.raises(repository.RepositoryError, match="not a valid manifest"):
        repository.open_version(version_copy, MODEL_NAME)


def test_unknown_schema_version_is_refused(version_copy: Path) -> None:
    edit_manifest(version_copy, {"schema_version": 99})
    with pytest.raises(repository.RepositoryError, match="schema_version"):
        repository.open_version(version_copy, MODEL_NAME)


def test_a_modified_model_file_is_refused(version_copy: Path) -> None:
    with (version_copy / MODEL_NAME / "1" / "baseline-fp32.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(repository.RepositoryError, match=r"baseline-fp32.onnx has SHA-256"):
        repository.open_version(version_copy, MODEL_NAME)


def test_a_manifest_for_another_model_is_refused(version_copy: Path) -> None:
    edit_manifest(version_copy, {"model_name": "other"})
    with pytest.raises(repository.RepositoryError, match="describes other version 1"):
        repository.open_version(version_copy, MODEL_NAME)


def test_fields_that_disagree_with_the_tables_are_refused(version_copy: Path) -> None:
    path = version_copy / MODEL_NAME / "1" / repository.MANIFEST
    manifest = json.loads(path.read_text())
    manifest["vocabulary_sizes"]["item_id"] = 3
    path.write_text(json.dumps(manifest))
    with pytest.raises(repository.RepositoryError, match="'item_id' has indices outside"):
        repository.open_version(version_copy, MODEL_NAME)


def test_a_default_variant_that_is_not_servable_is_refused(version_copy: Path) -> None:
    path = version_copy / MODEL_NAME / "1" / repository.MANIFEST
    manifest = json.loads(path.read_text())
    default = manifest["default_variants"]["cpu"]
    next(v for v in manifest["variants"] if v["name"] == default)["servable"] = False
    path.write_text(json.dumps(manifest))
    with pytest.raises(repository.RepositoryError, match="not a servable variant"):
        repository.open_version(version_copy, MODEL_NAME)


def test_a_missing_model_is_a_clear_cli_error(tmp_path: Path) -> None:
    result = run_cli("--repository", str(tmp_path), "evaluate")
    assert result.returncode == 1
    assert "no versions of model 'movielens-dcnv2'" in result.stderr


def test_a_named_path_that_is_not_there_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """Not silently replaced by the fetched data (--movielens), nor a traceback (--data)."""
    named = (("--movielens", "nowhere", "folder"), ("--data", "none.tsv", "file"))
    for option, name, what in named:
        result = run_cli("--repository", str(tmp_path), "build", option, str(tmp_path / name))
        assert result.returncode == 2
        assert result.stderr == f"error: {option} {tmp_path / name}: no such {what}\n"

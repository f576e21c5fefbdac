"""The model-acceleration variants of a real (short) build: shapes, operators, gate, report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from models.artifacts import repository
from models.evaluate import Evaluation, evaluate_version
from models.gate import numerics_gate
from models.graph_statistics import graph_statistics
from models.settings import GateSettings
from tests.conftest import MODEL_NAME

EXPECTED = {
    "baseline-fp32", "light-fp32", "pruned-fp32", "pruned-int8", "pruned-openvino",
    "pruned-openvino-int8", "pruned-fp16",
}  # fmt: skip


@pytest.fixture(scope="module")
def version(built_repository: Path) -> repository.ModelVersion:
    return repository.open_version(built_repository, MODEL_NAME)


@pytest.fixture(scope="module")
def report(version: repository.ModelVersion) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((version.path / "report.json").read_text())
    return result


@pytest.fixture(scope="module")
def evaluations(version: repository.ModelVersion) -> dict[str, Evaluation]:
    """Each variant re-scored from its file, in the runtime its figures come from."""
    scored = {}
    for e in evaluate_version(version):
        variant = version.manifest.variant(e.variant)
        if e.runtime == variant.scored_with.runtime:
            scored[e.variant] = e
    return scored


def initializer_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    return {i.name: tuple(i.dims) for i in onnx.load(str(path)).graph.initializer}


def test_every_variant_is_built(version: repository.ModelVersion) -> None:
    assert {v.name for v in version.manifest.variants} == EXPECTED
    assert version.manifest.default_variants["gpu"] == "pruned-fp16" or not (
        version.manifest.variant("pruned-fp16").servable
    )
    cpu = version.manifest.variant(version.manifest.default_variants["cpu"])
    assert set(cpu.runtimes) == {"onnxruntime", "openvino"}  # either CPU device can serve it


def test_pruned_graph_is_physically_smaller(version: repository.ModelVersion) -> None:
    light = initializer_shapes(version.variant_path("light-fp32"))
    pruned = initializer_shapes(version.variant_path("pruned-fp32"))
    for name in ("embedding.weight", "cross.0.weight", "mlp.0.weight", "mlp.3.weight"):
        assert np.prod(pruned[name]) < np.prod(light[name]), name
    assert pruned["embedding.weight"][1] == 8 and pruned["mlp.0.weight"][0] == 64


def test_quantized_graphs_hold_quantized_operators(version: repository.ModelVersion) -> None:
    int8 = onnx.load(str(version.variant_path("pruned-int8"))).graph
    ops = {n.op_type for n in int8.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [i for i in int8.initializer if i.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 3  # cross and MLP weights stored as int8
    ir = version.variant_path("pruned-openvino-int8").read_text()
    assert 'type="FakeQuantize"' in ir or 'type="FakeConvert"' in ir
    fp16 = onnx.load(str(version.variant_path("pruned-fp16"))).graph
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in fp16.initializer)
    boundary = [*fp16.input, *fp16.output]
    dense_and_output = [t for t in boundary if t.name in {"dense", "probability"}]
    assert all(t.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for t in dense_and_output)


def test_every_servable_variant_passes_the_gate_on_the_test_split(
    version: repository.ModelVersion,
    evaluations: dict[str, Evaluation],
    report: dict[str, Any],
) -> None:
    labels = version.load_test_split().labels
    gate = GateSettings(bootstrap_rounds=50)
    for variant in version.manifest.variants:
        if not variant.servable or variant.derived_from is None:
            continue
        assert variant.gate.startswith("passes"), (variant.name, variant.gate)
        source = version.manifest.variant(variant.derived_from)
        if variant.precision != "fp32" or variant.format == "openvino-ir":  # numerics only
            verdict = numerics_gate(
                labels, evaluations[source.name].scores, evaluations[variant.name].scores, gate
            )
            assert verdict.passed, (variant.name, verdict.reason)
    baseline_mean = report["baseline"]["summary"]["test_auc_mean"]
    for name, key in (("light-fp32", "distilled_summary"), ("pruned-fp32", None)):
        summary = report["pruning"]["summary"] if key is None else report["student"][key]
        servable = version.manifest.variant(name).servable
        assert servable == (baseline_mean - summary["test_auc_mean"] <= 0.002)


def test_report_numbers_come_from_the_files(
    version: repository.ModelVersion, evaluations: dict[str, Evaluation], report: dict[str, Any]
) -> None:
    for entry in report["variants"]:
        variant = version.manifest.variant(entry["name"])
        assert entry["test_auc"] == pytest.approx(evaluations[variant.name].test_auc, abs=1e-4)
        files = [variant.file] + ([variant.weights_file] if variant.weights_file else [])
        assert entry["file_bytes"] == sum((version.path / f.file).stat().st_size for f in files)
        if variant.format == "onnx" and variant.precision == "fp32":
            stats = graph_statistics(version.file(variant.file))
            assert (entry["parameters"], entry["flops_per_row"]) == (
                stats.parameters,
                stats.flops_per_row,
            )
    markdown = (version.path / "report.md").read_text()
    for entry in report["variants"]:
        assert f"{entry['test_auc']:.4f} ({entry['auc_delta']:+.4f})" in markdown


def test_latency_covers_every_runtime_and_batch_size(
    version: repository.ModelVersion, report: dict[str, Any]
) -> None:
    cells = {(t["variant"], t["runtime"], t["batch_rows"]) for t in report["latency"]}
    for rows in (1, 64, 256, 1024, 4096):
        for runtime in ("pytorch", "onnxruntime", "openvino"):
            assert ("baseline-fp32", runtime, rows) in cells
        assert ("pruned-int8", "onnxruntime", rows) in cells
        assert ("pruned-openvino-int8", "openvino", rows) in cells
    assert all(t["median_seconds"] > 0 for t in report["latency"])
    chart = (version.path / "latency.png").read_bytes()
    assert chart.startswith(b"\x89PNG") and len(chart) > 10_000
    targets = report["targets"]
    assert targets["best_cpu_variant"] == version.manifest.default_variants["cpu"]
    assert 0 < targets["parameters_vs_baseline"] < 1


def test_the_report_says_whether_distillation_helped(
    version: repository.ModelVersion, report: dict[str, Any]
) -> None:
    distilled = report["student"]["distilled_summary"]["test_auc_mean"]
    plain = report["student"]["labels_only_summary"]["test_auc_mean"]
    verdict = "helps" if distilled > plain else "does not help"
    assert (
        f"Distillation {verdict}: {distilled - plain:+.4f}"
        in (version.path / "report.md").read_text()
    )

"""`python -m models accelerate` on a plain ONNX model this test builds (not the MovieLens one):
variants written and gated on held-out rows with and without labels, one built to fail refused,
rows-file mistakes named, and the server serving the measured-fastest servable variant."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton

from bench.plain_models import user_sized_ranker
from config.settings import load_settings
from models.artifacts.acceleration_record import RECORD, AccelerationRecord, fastest, read_record
from models.artifacts.repository import RepositoryError
from models.artifacts.servable import open_servable
from tests.app.servers import running_server
from tests.conftest import QUICK_BUILD_ENV, run_cli

QUICK_ACCELERATE_ENV = {**QUICK_BUILD_ENV, "RECSYS_BENCHMARK__BATCH_ROWS": "[1, 64, 256]"}
GATE = load_settings().gate


def rows(count: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "cat": rng.integers(0, 500, (count, 8)).astype(np.int64),
        "dense": rng.random((count, 4)).astype(np.float32),
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A source model, held-out rows labelled by its own probabilities, calibration rows."""
    folder = tmp_path_factory.mktemp("accelerate-data")
    source = user_sized_ranker(folder / "model.onnx", vocabulary=500)
    held_out = rows(3000, 1)
    scores = ort.InferenceSession(str(source)).run(None, held_out)[0]
    labels = (np.random.default_rng(2).random(len(scores)) < scores).astype(np.int64)
    np.savez(folder / "eval.npz", **held_out, labels=labels)  # type: ignore[arg-type]
    np.savez(folder / "unlabelled.npz", **held_out)  # type: ignore[arg-type]
    np.savez(folder / "calibration.npz", **rows(2000, 3))  # type: ignore[arg-type]
    return folder


def accelerate(data: Path, root: Path, rows_file: str, *flags: str) -> Path:
    version = root / "ranker" / "1"
    version.mkdir(parents=True)
    shutil.copy(data / "model.onnx", version / "model.onnx")
    result = run_cli(
        "accelerate", str(version), "--eval", str(data / rows_file),
        "--calibration", str(data / "calibration.npz"), *flags, env=QUICK_ACCELERATE_ENV,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "accelerated variants" in result.stdout  # the report, printed
    return version


def consistent(record: AccelerationRecord) -> None:
    """Each verdict follows from its own recorded figures and the gate's thresholds."""
    for variant in record.variants:
        figures = variant.outputs["score"]
        change = abs(figures["distinct"] - figures["distinct_source"]) / figures["distinct_source"]
        agrees = (figures["spearman"] >= GATE.numerics_min_spearman
                  and change <= GATE.numerics_max_distinct_change)  # fmt: skip
        if "auc_difference" not in figures:
            assert variant.servable == agrees, variant
        elif not agrees:
            assert not variant.servable, variant


@pytest.fixture(scope="module")
def labelled(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return accelerate(data, tmp_path_factory.mktemp("labelled"), "eval.npz")


def test_variants_are_written_gated_and_timed(labelled: Path) -> None:
    record = read_record(labelled)
    names = {v.name for v in record.variants}
    assert {"model", "int8", "int8-tables", "openvino-int8", "openvino-fp16", "fp16"} <= names
    variants = {v.name: v for v in record.variants}
    for name in names - {"model"}:
        assert (labelled / variants[name].file.file).is_file()
    assert record.eval_rows.labelled_outputs == ("score",)
    for variant in record.variants:  # labelled: every verdict carries AUC and its interval
        score = variant.outputs["score"]
        assert (
            score["auc_difference_low"] <= score["auc_difference"] <= score["auc_difference_high"]
        )
        assert not variant.servable or variant.gate.startswith("passes: score: AUC")
    source = variants["model"]
    assert source.servable and source.outputs["score"]["max_abs_difference"] == 0
    assert set(variants["int8"].latency_ms["onnxruntime"]) == {"1", "64", "256"}
    assert variants["fp16"].servable and variants["fp16"].latency_ms == {}  # GPU: not timed
    assert variants["openvino-int8"].size_bytes < variants["model"].size_bytes
    tables = variants["int8-tables"].size_bytes, variants["openvino-fp16"].size_bytes
    assert tables[0] < 0.4 * variants["model"].size_bytes  # the embedding table dominates
    assert tables[1] < 0.6 * variants["model"].size_bytes
    consistent(record)
    for backend in ("openvino-cpu", "onnxruntime-cpu"):
        chosen = variants[record.default_variants[backend]]
        assert chosen.servable and "fastest servable" in record.default_reasons[backend]
    report = (labelled / "report.md").read_text()
    assert "| int8 (onnxruntime) | int8 |" in report and "Served by default" in report


def test_without_labels_the_gate_is_agreement(data: Path, tmp_path: Path) -> None:
    record = read_record(accelerate(data, tmp_path, "unlabelled.npz"))
    assert record.eval_rows.labelled_outputs == ()
    for variant in record.variants:
        assert "AUC" not in variant.gate and "auc_difference" not in variant.outputs["score"]
    consistent(record)


def test_an_int8_output_layer_that_collapses_scores_is_refused(
    data: Path, tmp_path: Path, labelled: Path
) -> None:
    record = read_record(accelerate(data, tmp_path, "eval.npz", "--quantize-outputs"))
    int8 = next(v for v in record.variants if v.name == "int8")
    kept = next(v for v in read_record(labelled).variants if v.name == "int8")  # output float
    assert not int8.servable and int8.gate.startswith("score: ")  # the first rule it broke
    assert int8.outputs["score"]["distinct"] < 0.5 * kept.outputs["score"]["distinct"]  # collapsed
    assert record.default_variants["onnxruntime-cpu"] != "int8"
    assert "int8" not in open_servable(tmp_path, "ranker", 1).variants  # never served


@pytest.mark.parametrize(
    ("arrays", "problem"),
    [
        ({"cat": np.zeros((4, 8), np.int64)}, "no array 'dense'"),
        ({"cat": np.zeros((4, 8), np.int32), "dense": np.zeros((4, 4), np.float32)},
         "'cat' is int32, the model takes int64"),
        ({"cat": np.zeros((4, 7), np.int64), "dense": np.zeros((4, 4), np.float32)},
         "'cat' has shape [4, 7], the model takes [-1, 8]"),
        ({"cat": np.zeros((4, 8), np.int64), "dense": np.zeros((4, 4), np.float32),
          "labels": np.array([0, 1, 2, 1])}, "'labels' must be 4 binary labels"),
    ],
)  # fmt: skip
def test_rows_file_mistakes_are_one_line(
    data: Path, tmp_path: Path, arrays: dict[str, np.ndarray], problem: str
) -> None:
    version = tmp_path / "ranker" / "1"
    version.mkdir(parents=True)
    shutil.copy(data / "model.onnx", version / "model.onnx")
    np.savez(tmp_path / "bad.npz", **arrays)  # type: ignore[arg-type]
    result = run_cli("accelerate", str(version), "--eval", str(tmp_path / "bad.npz"))
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert f"{tmp_path / 'bad.npz'}: " in result.stderr and problem in result.stderr


def test_the_server_serves_the_fastest_servable_variant(labelled: Path, tmp_path: Path) -> None:
    record = read_record(labelled)
    root = labelled.parent.parent
    with running_server(root, {}, tmp_path / "server.log") as (_, url):
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        groups = {g["backend"]: g for g in client.get_model_config("ranker")["instance_group"]}
        max_rows = load_settings().batching.max_batch_rows
        for backend, group in groups.items():  # fastest at the batch sizes the server runs
            variant, why = fastest(record.variants, backend.removesuffix("-cpu"), max_rows)
            assert (group["variant"], group["variant_reason"]) == (variant, why)
            assert why.startswith("the fastest servable variant") and f"{max_rows}" not in why
        held_out = rows(64, 1)
        inputs = []
        for name, array in held_out.items():
            tensor = triton.InferInput(
                name, list(array.shape), "INT64" if name == "cat" else "FP32"
            )
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        served = client.infer("ranker", inputs).as_numpy("score")
        source = ort.InferenceSession(str(labelled / "model.onnx")).run(None, held_out)[0]
        assert served is not None and np.corrcoef(served, source)[0, 1] > 0.99


def test_a_record_from_another_cpu_serves_the_source(labelled: Path, tmp_path: Path) -> None:
    copy = tmp_path / "ranker" / "1"
    shutil.copytree(labelled, copy)
    document = json.loads((copy / RECORD).read_text())
    document["cpu"] = "Some Other CPU"
    (copy / RECORD).write_text(json.dumps(document))
    version = open_servable(tmp_path, "ranker", 1)
    assert version.default_variants["cpu"] == "model"
    assert "openvino-cpu" not in version.default_variants
    assert "another CPU (Some Other CPU)" in version.default_reasons["openvino-cpu"]
    assert version.timed_defaults == {"openvino-cpu", "onnxruntime-cpu"}
    with running_server(tmp_path, {}, tmp_path / "server.log") as (_, url):
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        for group in client.get_model_config("ranker")["instance_group"]:
            servable = [v for v in version.variants.values() if v.device != "gpu"]
            runtime = "openvino" if group["backend"] == "openvino-cpu" else "onnxruntime"
            timed = [v.name for v in servable if runtime in v.runtimes]
            assert group["variant"] in timed, group
            if len(timed) == 1:
                assert group["variant_reason"].startswith("the only servable variant"), group
            else:
                assert group["variant_reason"].startswith("timed at start-up"), group
                assert all(f"{name} " in group["variant_reason"] for name in timed)
    user_sized_ranker(copy / "model.onnx", vocabulary=500, seed=5)  # retrained, not accelerated
    with pytest.raises(RepositoryError, match=r"describes another model\.onnx"):
        open_servable(tmp_path, "ranker", 1)


def test_fastest_counts_the_batch_sizes_the_server_runs(labelled: Path) -> None:
    variants = list(read_record(labelled).variants)
    source = next(v for v in variants if v.name == "model")
    # A made-up variant: fast at one row, slow at 256: the fastest only for batches of one.
    quick = source.model_copy(update={
        "name": "quick", "latency_ms": {"onnxruntime": {
            "1": source.latency_ms["onnxruntime"]["1"] / 10,
            "64": source.latency_ms["onnxruntime"]["64"] * 5,
            "256": source.latency_ms["onnxruntime"]["256"] * 5}}})  # fmt: skip
    assert fastest([*variants, quick], "onnxruntime", max_rows=1)[0] == "quick"
    assert fastest([*variants, quick], "onnxruntime", max_rows=1)[1].endswith("batches of 1 rows)")
    assert fastest([*variants, quick], "onnxruntime")[0] != "quick"

"""`python -m models build --data FILE` end to end on a small synthetic Criteo-shaped file: the
table's reading and encoding, each gate's verdict against its own figures, the version served over
V2 by a real server, and a malformed file named in one line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton

from config.settings import load_settings
from models import ctr_table, synthetic
from models.artifacts.acceleration_record import read_record
from models.artifacts.checksum import sha256_file
from models.artifacts.servable import open_servable
from models.metrics import roc_auc
from models.settings import TableSettings
from tests.app.servers import running_server
from tests.conftest import QUICK_BUILD_ENV, run_cli

ROWS = 12_000
QUICK_TABLE_ENV = {
    **QUICK_BUILD_ENV,
    "RECSYS_BENCHMARK__BATCH_ROWS": "[1, 64, 256]",
    "RECSYS_TABLE__MIN_TOKEN_COUNT": "2",
}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cardinalities = tuple(min(c, 1000) for c in synthetic.DEFAULT_CARDINALITIES)
    path = tmp_path_factory.mktemp("table") / "Criteo Sample.tsv"
    synthetic.write_criteo_file(path, synthetic.generate(ROWS, 0, cardinalities))
    return path


@pytest.fixture(scope="module")
def built(data_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("table-repository")
    result = run_cli(
        "--repository", str(root), "build", "--data", str(data_file), "--max-epochs", "2",
        "--seeds", "0", env=QUICK_TABLE_ENV,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Model repository written to" in result.stdout
    return root / "criteo-sample" / "1"  # the model named after the file


def test_reading_and_encoding_a_table(tmp_path: Path) -> None:
    path = tmp_path / "t.tsv"
    path.write_text(
        "1\t3\t\ta\tx\n"  # a missing dense value
        "0\t-2\t1.5\ta\t\n"  # a missing token, a negative count
        "1\t0\t7\tb\tx\n"
        "0\t1\t2\tc\ty\n",  # c and y appear only here: outside the training rows
        encoding="utf-8",
    )
    settings = TableSettings(dense_columns=2, categorical_columns=2, min_token_count=1)
    raw = ctr_table.read_table(path, settings)
    assert raw.dense_fields == ("I1", "I2") and raw.categorical_fields == ("C1", "C2")
    assert raw.labels.tolist() == [1, 0, 1, 0]
    encoded = ctr_table.encode(raw, np.array([0, 1, 2]), settings)
    assert encoded.vocabularies == {"C1": ("a", "b"), "C2": ("x",)}
    assert encoded.categorical.tolist() == [[1, 1], [1, 0], [2, 1], [0, 0]]
    assert np.allclose(encoded.dense[:, 0], np.log1p([3, 0, 0, 1]))
    assert np.allclose(encoded.dense[:, 1], np.log1p([0, 1.5, 7, 2]))
    twice = ctr_table.encode(raw, np.array([0, 1, 2]), settings.model_copy(
        update={"min_token_count": 2, "dense_transform": "none"}))  # fmt: skip
    assert twice.vocabularies == {"C1": ("a",), "C2": ("x",)}  # b was seen once
    assert twice.dense[1].tolist() == [-2.0, 1.5]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("1\t3\t4\ta\n", "4 fields, expected 5"),
        ("2\t3\t4\ta\tb\n", "label '2' is not 0 or 1"),
        ("1\t3\tmany\ta\tb\n", "dense field I2 is 'many', not a number"),
        ("1\tnan\t4\ta\tb\n", "dense field I1 is not finite"),
    ],
)
def test_a_malformed_table_is_named_by_line_and_field(tmp_path: Path, line: str,
                                                      problem: str) -> None:  # fmt: skip
    path = tmp_path / "bad.tsv"
    path.write_text("0\t1\t2\ta\tb\n" + line, encoding="utf-8")
    settings = TableSettings(dense_columns=2, categorical_columns=2)
    with pytest.raises(ctr_table.TableError) as raised:
        ctr_table.read_table(path, settings)
    assert str(raised.value).startswith(f"{path}:2: ") and problem in str(raised.value)


def test_a_gzipped_table_reads_the_same_and_a_truncated_one_is_named(tmp_path: Path) -> None:
    text = "1\t3\ta\n0\t\tb\n" * 50
    plain, packed = tmp_path / "t.tsv", tmp_path / "t.tsv.gz"
    plain.write_text(text, encoding="utf-8")
    packed.write_bytes(gzip.compress(text.encode()))
    settings = TableSettings(dense_columns=1, categorical_columns=1)
    a, b = ctr_table.read_table(plain, settings), ctr_table.read_table(packed, settings)
    assert np.array_equal(a.dense, b.dense) and np.array_equal(a.token_ids, b.token_ids)
    assert a.tokens == b.tokens and len(b) == 100
    packed.write_bytes(gzip.compress(text.encode())[:-12])
    with pytest.raises(ctr_table.TableError, match=r"t\.tsv\.gz: cannot read it"):
        ctr_table.read_table(packed, settings)


def test_the_cli_names_a_bad_file_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "short.tsv"
    path.write_text("1\t2\tx\n", encoding="utf-8")
    result = run_cli("-q", "--repository", str(tmp_path), "build", "--data", str(path))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: {path}:1: 3 fields, expected 40 (the label, 13 dense, 26 categorical; [table] "
        "settings)"
    )
    assert not (tmp_path / "short").exists()


def test_the_build_writes_a_gated_plain_version(built: Path) -> None:
    record = json.loads((built / "build.json").read_text())
    gate = load_settings().gate
    variants = {v["name"]: v for v in record["variants"]}
    assert list(variants) == ["baseline-fp32", "light-fp32", "pruned-fp32"]
    baseline = variants["baseline-fp32"]
    assert baseline["servable"] and baseline["gate"] == "the reference"
    assert baseline["test_auc_mean"] > 0.65  # the planted model's signal, learnt
    sizes = [v["parameters"] for v in variants.values()]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > 1_000_000
    for v in list(variants.values())[1:]:  # each structural verdict follows from its figures
        drop = baseline["test_auc_mean"] - v["test_auc_mean"]
        assert v["servable"] == (drop <= gate.structural_max_auc_drop), v
        assert f"{v['test_auc_mean']:.4f}" in v["gate"]
    chosen = record["source"]
    assert chosen == [n for n, v in variants.items() if v["servable"]][-1]
    assert sha256_file(built / "model.onnx") == sha256_file(built / f"{chosen}.onnx")

    # model.onnx scores the test split as the record says, and its variants were gated on it.
    with np.load(built / "test_split.npz") as test:
        rows = {"categorical": test["categorical"], "dense": test["dense"]}
        labels = test["labels"]
    assert len(labels) == record["protocol"]["split_rows"]["test"] == ROWS // 10
    scores = ort.InferenceSession(str(built / "model.onnx")).run(None, rows)[0]
    assert roc_auc(labels, scores) == pytest.approx(variants[chosen]["test_auc_mean"], abs=1e-4)
    accelerated = read_record(built)
    assert accelerated.source.sha256 == sha256_file(built / "model.onnx")
    assert accelerated.eval_rows.file == "test_split.npz"
    assert accelerated.eval_rows.labelled_outputs == ("probability",)
    assert accelerated.parameters == variants[chosen]["parameters"]
    names = {v.name for v in accelerated.variants}
    assert {"model", "int8", "openvino-int8", "fp16"} <= names

    vocabularies = json.loads((built / "vocabularies.json").read_text())
    assert list(vocabularies) == [f"C{i}" for i in range(1, 27)]
    for column, tokens in zip(rows["categorical"].T, vocabularies.values(), strict=True):
        assert column.min() >= 0 and column.max() <= len(tokens)

    report = (built / "report.md").read_text()
    assert report.startswith("# criteo-sample version 1: built from")
    assert "## criteo-sample version 1: accelerated variants" in report
    for name in [*variants, *names]:
        assert f"| {name} " in report


def test_the_built_version_is_served(built: Path, tmp_path: Path) -> None:
    version = open_servable(built.parent.parent, "criteo-sample", 1)
    assert not version.built  # a plain version: no manifest, no feature tables
    with np.load(built / "test_split.npz") as test:
        rows = {"categorical": test["categorical"][:50], "dense": test["dense"][:50]}
    with running_server(built.parent.parent, {}, tmp_path / "server.log") as (_, url):
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        metadata = client.get_model_metadata("criteo-sample")
        assert [(i["name"], i["shape"]) for i in metadata["inputs"]] == [
            ("categorical", [-1, 26]), ("dense", [-1, 13])
        ]  # fmt: skip
        groups = client.get_model_config("criteo-sample")["instance_group"]
        assert all(g["variant"] in version.variants for g in groups), groups
        inputs = []
        for name, array in rows.items():
            tensor = triton.InferInput(name, list(array.shape), "INT64" if name == "categorical"
                                       else "FP32")  # fmt: skip
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        served = client.infer("criteo-sample", inputs).as_numpy("probability")
    source = ort.InferenceSession(str(built / "model.onnx")).run(None, rows)[0]
    assert served is not None and np.abs(served - source).max() < 0.02

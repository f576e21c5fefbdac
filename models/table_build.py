"""`python -m models build --data FILE`: structural acceleration from a user's own CTR table.

The same protocol as the MovieLens-100K build (`models/build.py`): a random 8:1:1 split by row
with `[data] split_seed`; the heavy DCN-v2 baseline over seeds; the distilled student, the same
student on labels alone, and the student pruned step by step with distillation; ONNX export with
parity against PyTorch; the structural gate (mean test AUC over seeds against the baseline's). The
smallest float model that passes becomes the version's `model.onnx`, and `python -m models
accelerate` makes and gates its INT8, FP16 and BF16 variants on the test split. The version is a
plain one (`models/artifacts/servable.py`): served over V2 with the fastest variant that passed.

Written beside `model.onnx`: the three float models (`baseline-fp32.onnx`, `light-fp32.onnx`,
`pruned-fp32.onnx`), `vocabularies.json` (the encoding a client applies, `models/ctr_table.py`),
`test_split.npz` and `calibration.npz` (rows files `accelerate` reads again), `build.json` and
`build.md` (this half of the report), `acceleration.json` and `report.md`.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from config.settings import Settings
from models import ctr_table
from models.accelerate import BUILD_REPORT, SOURCE, accelerate, render_report
from models.artifacts.acceleration_record import read_record
from models.artifacts.servable import open_servable
from models.benchmark import Runner, Timing, benchmark
from models.build import (
    Splits,
    Trained,
    export_floats,
    logistic_reference,
    new_staging,
    publish,
    train_all,
)
from models.candidates import Candidate
from models.runtime import OnnxRuntimeSession, OpenVinoSession
from models.split import random_split
from models.train import Examples

log = logging.getLogger(__name__)
TEST_ROWS = "test_split.npz"
CALIBRATION_ROWS = "calibration.npz"
SPLIT_METHOD = "random 8:1:1 by row"


def build_from_table(settings: Settings, data_path: Path) -> Path:
    """Build `<root>/<model_name>/<version>` from the table at `data_path`; return its folder."""
    started = time.monotonic()
    s_data, s_repo = settings.data, settings.repository
    log.info("stage 1/5: data (%s)", data_path)
    raw = ctr_table.read_table(data_path, settings.table)
    split = random_split(
        len(raw), s_data.validation_fraction, s_data.test_fraction, s_data.split_seed
    )
    data = ctr_table.encode(raw, split.train, settings.table)
    splits = Splits(*(
        Examples(data.categorical[r], data.dense[r], data.labels[r])
        for r in (split.train, split.validation, split.test)
    ))  # fmt: skip
    sizes = data.vocabulary_sizes
    log.info(
        "%d rows (%.1f%% positive); split %d / %d / %d (seed %d); %d embedding rows over %d "
        "fields (tokens seen >= %d times in training)",
        len(raw), 100 * float(raw.labels.mean()), *split.sizes.values(), split.seed, sum(sizes),
        len(sizes), settings.table.min_token_count,
    )  # fmt: skip
    log.info("stage 2/5: training (reference, baseline, students, pruning)")
    references = [logistic_reference(settings, sizes, splits)]
    trained = train_all(settings, sizes, splits)

    staging = new_staging(settings)
    log.info("stage 3/5: ONNX export, runtime parity, structural gate")
    floats = export_floats(settings, trained, splits, staging)
    for c in floats[1:]:
        (log.info if c.servable else log.warning)("gate: %s: %s", c.name, c.gate)
    chosen = next(c for c in reversed(floats) if c.servable)
    shutil.copyfile(chosen.path, staging / SOURCE)
    log.info("%s is %s: the smallest float model that passed", SOURCE, chosen.name)
    timings = float_latency(floats, splits.test, settings)
    write_rows(staging, splits, settings)
    (staging / "vocabularies.json").write_text(json.dumps(data.vocabularies), encoding="utf-8")
    record = build_record(settings, raw, data, split.sizes, trained, floats, chosen, references,
                          timings)  # fmt: skip
    (staging / "build.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    (staging / BUILD_REPORT).write_text(render_build(record), encoding="utf-8")

    log.info("stage 4/5: INT8, FP16 and BF16 variants of %s, gated on the test split", SOURCE)
    accelerate(staging, staging / TEST_ROWS, staging / CALIBRATION_ROWS, settings)
    log.info("stage 5/5: publishing (%.0f s in all)", time.monotonic() - started)
    final = publish(staging, settings)
    # The report again, now titled by the version's own folder; then open it as the server would.
    (final / "report.md").write_text(render_report(final, read_record(final)), encoding="utf-8")
    open_servable(s_repo.root, s_repo.model_name, s_repo.version)
    return final


def write_rows(folder: Path, splits: Splits, settings: Settings) -> None:
    """The test split with labels (the gate's rows) and a spread sample of training rows."""
    test = splits.test
    np.savez(folder / TEST_ROWS, categorical=test.categorical, dense=test.dense,
             labels=test.labels.astype(np.int64))  # fmt: skip
    train = splits.train
    count = min(settings.quantization.calibration_rows, len(train))
    pick = np.linspace(0, len(train) - 1, count).astype(np.int64)
    np.savez(folder / CALIBRATION_ROWS, categorical=train.categorical[pick],
             dense=train.dense[pick])  # fmt: skip


def float_latency(floats: list[Candidate], test: Examples, settings: Settings) -> list[Timing]:
    """Each float model single-threaded in both CPU runtimes, side by side."""
    rows = max(settings.benchmark.batch_rows)
    repeat = -(-rows // len(test))
    inputs = {
        "categorical": np.concatenate([test.categorical] * repeat)[:rows],
        "dense": np.concatenate([test.dense] * repeat)[:rows],
    }
    runners = []
    for c in floats:
        runners.append(Runner(c.name, "onnxruntime", "f32",
                              OnnxRuntimeSession(c.path, intra_op_threads=1).run))  # fmt: skip
        runners.append(Runner(c.name, "openvino", "f32",
                              OpenVinoSession(c.path, "f32", threads=1).run))  # fmt: skip
    log.info("timing the float models at %s rows, single-threaded",
             ", ".join(map(str, settings.benchmark.batch_rows)))  # fmt: skip
    return benchmark(runners, inputs, settings.benchmark)


def summary(records: list[dict[str, Any]]) -> dict[str, float]:
    aucs = [r["test_auc"] for r in records]
    return {
        "test_auc_mean": statistics.fmean(aucs),
        "test_auc_std": statistics.pstdev(aucs),
        "test_log_loss_mean": statistics.fmean(r["test_log_loss"] for r in records),
    }


def build_record(
    settings: Settings,
    raw: ctr_table.RawTable,
    data: ctr_table.Encoded,
    split_rows: dict[str, int],
    trained: Trained,
    floats: list[Candidate],
    chosen: Candidate,
    references: list[dict[str, Any]],
    timings: list[Timing],
) -> dict[str, Any]:
    t, st, table = settings.training, settings.student, settings.table
    seeds = {"baseline-fp32": trained.baselines, "light-fp32": trained.students,
             "pruned-fp32": trained.pruned}  # fmt: skip
    architectures = {
        "baseline-fp32": f"DCN-v2, embeddings {t.embedding_dim}, {t.cross_layers} cross layers, "
        f"MLP {list(t.mlp_units)}",
        "light-fp32": f"DCN-v2, embeddings {st.embedding_dim}, {st.cross_layers} cross layer(s), "
        f"MLP {list(st.mlp_units)}, distilled (weight {st.distillation_weight:g})",
        "pruned-fp32": "light-fp32 pruned to embeddings "
        f"{settings.pruning.steps[-1].embedding_dim}, MLP "
        f"{list(settings.pruning.steps[-1].mlp_units)}, fine-tuned with distillation",
    }
    latency: dict[str, dict[str, dict[str, float]]] = {}
    for x in timings:
        cells = latency.setdefault(x.variant, {}).setdefault(x.runtime, {})
        cells[str(x.batch_rows)] = x.median_seconds * 1e3
    return {
        "model_name": settings.repository.model_name,
        "model_version": settings.repository.version,
        "protocol": {
            "data": str(raw.source),
            "rows": len(raw),
            "positive_rate": float(raw.labels.mean()),
            "split": SPLIT_METHOD,
            "split_seed": settings.data.split_seed,
            "split_rows": split_rows,
            "seeds": list(t.seeds),
            "metric": "ROC AUC and log loss on the test split, each model scored once after "
            "early stopping on validation AUC",
            "encoding": f"{len(raw.categorical_fields)} categorical fields (vocabularies from "
            f"training rows, tokens seen >= {table.min_token_count} times; others and missing: "
            f"index 0), {len(raw.dense_fields)} dense (missing 0, {table.dense_transform})",
            "embedding_rows": sum(data.vocabulary_sizes),
        },
        "variants": [
            {
                "name": c.name,
                "architecture": architectures[c.name],
                "parameters": c.parameters,
                "size_bytes": c.path.stat().st_size,
                "seeds": [s.record for s in seeds[c.name]],
                **summary([s.record for s in seeds[c.name]]),
                "servable": c.servable,
                "gate": c.gate,
                "latency_ms": latency.get(c.name, {}),
            }
            for c in floats
        ],
        "labels_only_student": summary([s.record for s in trained.plain_students]),
        "references": references,
        "source": chosen.name,
    }


def render_build(record: dict[str, Any]) -> str:
    p = record["protocol"]
    sizes = sorted({int(r) for v in record["variants"] for t in v["latency_ms"].values()
                    for r in t})  # fmt: skip
    lines = [
        f"# {record['model_name']} version {record['model_version']}: built from `{p['data']}`",
        "",
        f"Protocol: {p['rows']:,} rows ({p['positive_rate']:.1%} positive), {p['split']} "
        f"(seed {p['split_seed']}: {p['split_rows']['train']:,} train, "
        f"{p['split_rows']['validation']:,} validation, {p['split_rows']['test']:,} test); "
        f"{p['metric']}; seeds {p['seeds']}. Encoding: {p['encoding']}; "
        f"{p['embedding_rows']:,} embedding rows.",
        "",
        "| variant | architecture | parameters | size | test AUC (mean, std over seeds) | "
        "log loss | servable | gate |",
        "|---|---|---:|---:|---|---:|---|---|",
    ]
    for v in record["variants"]:
        lines.append(
            f"| {v['name']} | {v['architecture']} | {v['parameters']:,} | "
            f"{v['size_bytes'] / 1e6:.2f} MB | {v['test_auc_mean']:.4f} ({v['test_auc_std']:.4f}) "
            f"| {v['test_log_loss_mean']:.4f} | {'yes' if v['servable'] else '**no**'} | "
            f"{v['gate']} |"
        )
    plain = record["labels_only_student"]
    lines.append(
        f"| (light on labels alone, not exported) | | | | {plain['test_auc_mean']:.4f} "
        f"({plain['test_auc_std']:.4f}) | {plain['test_log_loss_mean']:.4f} | | |"
    )
    for r in record["references"]:
        lines.append(f"| ({r['name']}) | | | | {r['test_auc']:.4f} | {r['test_log_loss']:.4f} "
                     "| | |")  # fmt: skip
    lines += [
        "",
        "Latency, single-threaded median per batch (ms):",
        "",
        "| variant (runtime) | " + " | ".join(f"batch {r}" for r in sizes) + " |",
        "|---|" + "---:|" * len(sizes),
    ]
    for v in record["variants"]:
        for runtime, cells in v["latency_ms"].items():
            row = [f"{cells[str(r)]:.3f}" if str(r) in cells else "" for r in sizes]
            lines.append(f"| {v['name']} ({runtime}) | " + " | ".join(row) + " |")
    lines += ["", f"`{SOURCE}` is **{record['source']}**, the smallest float model that passed "
              "the structural gate; the variants below are made from it.", ""]  # fmt: skip
    return "\n".join(lines)

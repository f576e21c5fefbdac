"""Build the default model repository, version by version, from MovieLens-100K.

Steps: data and split; the heavy DCN-v2 baseline over seeds; the distilled student and its
structured pruning over seeds; ONNX export of the float models with parity checks; INT8 for ONNX
Runtime and OpenVINO and FP16 for GPU from the best float model; the accuracy gate on every
variant; single-thread latency side by side; manifest, report and chart. Everything is written to
a staging folder first, so a failed build never leaves a half-written version behind.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from config.settings import Settings
from models import features, movielens
from models.architectures import DCNv2, LogisticRegression
from models.artifacts import repository
from models.artifacts.feature_tables import CATEGORICAL_INPUT, DENSE_INPUT
from models.benchmark import Runner, Timing, benchmark
from models.build_record import build_manifest, build_report
from models.candidates import Candidate, derived, export_float
from models.chart import latency_chart
from models.gate import numerics_gate, paired_bootstrap_auc_difference, structural_gate
from models.metrics import log_loss, roc_auc
from models.quantize import convert_float16, convert_openvino, quantize_onnxruntime_int8
from models.report import render_markdown
from models.runtime import OnnxRuntimeSession, OpenVinoPrecision, OpenVinoSession
from models.split import random_split
from models.train import Examples, evaluate, fit, predict
from models.variants import SeedModel, prune_student, train_students

log = logging.getLogger(__name__)

BASELINE_VARIANT = "baseline-fp32"
REFERENCE_LR_LEARNING_RATE = 0.01
POPULARITY_PRIOR_ROWS = 10.0
CHART = "latency.png"


class BuildError(RuntimeError):
    """The build produced something that must not be published (e.g. failed export parity)."""


@dataclass(frozen=True)
class Splits:
    train: Examples
    validation: Examples
    test: Examples


def examples(data: features.EncodedDataset, rows: npt.NDArray[np.int64]) -> Examples:
    inputs = data.inputs(rows)
    return Examples(inputs[CATEGORICAL_INPUT], inputs[DENSE_INPUT], data.labels[rows])


def as_inputs(e: Examples) -> dict[str, np.ndarray]:
    return {CATEGORICAL_INPUT: e.categorical, DENSE_INPUT: e.dense}


def popularity_scores(data: features.EncodedDataset) -> npt.NDArray[np.float64]:
    """Each test row scored by its item's smoothed positive rate in training."""
    train = data.split.train
    items = len(data.tables.item_ids) + 1
    positives = np.bincount(data.item_rows[train], weights=data.labels[train], minlength=items)
    counts = np.bincount(data.item_rows[train], minlength=items)
    prior = float(data.labels[train].mean())
    rate = (positives + POPULARITY_PRIOR_ROWS * prior) / (counts + POPULARITY_PRIOR_ROWS)
    return np.asarray(rate[data.item_rows[data.split.test]], dtype=np.float64)


def new_baseline(settings: Settings, sizes: list[int], dense: int, seed: int) -> DCNv2:
    torch.manual_seed(seed)
    t = settings.training
    return DCNv2(sizes, dense, t.embedding_dim, t.cross_layers, t.mlp_units, t.dropout)


def popularity_reference(data: features.EncodedDataset, splits: Splits) -> dict[str, Any]:
    """Each test row scored by its item's popularity: MovieLens's simplest anchor."""
    popularity = popularity_scores(data)
    return {
        "name": "item popularity (smoothed positive rate)",
        "test_auc": roc_auc(splits.test.labels, popularity),
        "test_log_loss": log_loss(splits.test.labels, popularity),
    }


def logistic_reference(settings: Settings, sizes: list[int], splits: Splits) -> dict[str, Any]:
    """A logistic regression on the same features: the anchor any model must clear."""
    seed = settings.training.seeds[0]
    torch.manual_seed(seed)
    lr = LogisticRegression(sizes, splits.train.dense.shape[1])
    lr_settings = settings.training.model_copy(update={"learning_rate": REFERENCE_LR_LEARNING_RATE})
    fit(lr, splits.train, splits.validation, lr_settings, seed, label="logistic regression")
    lr_auc, lr_loss = evaluate(lr, splits.test)
    return {"name": "logistic regression, same features", "test_auc": lr_auc,
            "test_log_loss": lr_loss}  # fmt: skip


def train_baselines(settings: Settings, sizes: list[int], splits: Splits) -> list[SeedModel]:
    """One baseline per seed; the first seed's model is the one published."""
    baselines = []
    for seed in settings.training.seeds:
        model = new_baseline(settings, sizes, splits.train.dense.shape[1], seed)
        result = fit(
            model, splits.train, splits.validation, settings.training, seed,
            label=f"baseline, seed {seed}",
        )  # fmt: skip
        auc, loss = evaluate(model, splits.test)
        log.info("baseline seed %d: test AUC %.4f, log loss %.4f", seed, auc, loss)
        record = {"seed": seed, **asdict(result), "test_auc": auc, "test_log_loss": loss}
        baselines.append(SeedModel(seed, model, record))
    return baselines


def write_data_files(data: features.EncodedDataset, folder: Path) -> None:
    data.tables.save(folder / repository.FEATURE_TABLES)
    test = data.split.test
    with (folder / repository.TEST_SPLIT).open("wb") as f:
        np.savez(
            f,
            user_rows=data.user_rows[test],
            item_rows=data.item_rows[test],
            labels=data.labels[test],
        )
    train = data.split.train
    order = np.lexsort((data.item_rows[train], data.user_rows[train]))
    users, items = data.user_rows[train][order], data.item_rows[train][order]
    indptr = np.searchsorted(users, np.arange(len(data.tables.user_ids) + 2))
    with (folder / repository.SEEN_ITEMS).open("wb") as f:
        np.savez(f, indptr=indptr.astype(np.int64), item_rows=items.astype(np.int64))
    vocabularies = {name: list(v.tokens) for name, v in data.vocabularies.items()}
    (folder / repository.VOCABULARIES).write_text(json.dumps(vocabularies), encoding="utf-8")


@dataclass
class Trained:
    baselines: list[SeedModel]
    students: list[SeedModel]
    plain_students: list[SeedModel]  # the same students trained on labels alone
    pruned: list[SeedModel]


def train_all(settings: Settings, sizes: list[int], splits: Splits) -> Trained:
    """The baselines, the distilled and the label-only students, the pruned students."""
    baselines = train_baselines(settings, sizes, splits)
    teacher = predict(baselines[0].model, splits.train)
    args = (settings, sizes, splits.train, splits.validation, splits.test)
    students = train_students(*args, teacher)
    plain = train_students(*args, None)
    pruned = [
        prune_student(settings, s, splits.train, splits.validation, splits.test, teacher)
        for s in students
    ]
    return Trained(baselines, students, plain, pruned)


def export_floats(
    settings: Settings, trained: Trained, splits: Splits, folder: Path
) -> list[Candidate]:
    """The float variants, parity-checked, and the structural gate for the student and pruned."""
    parity_rows = Examples(
        *(a[: settings.repository.parity_rows] for a in asdict(splits.test).values())
    )
    test_inputs = as_inputs(splits.test)
    models = {
        BASELINE_VARIANT: trained.baselines[0].model,
        "light-fp32": trained.students[0].model,
        "pruned-fp32": trained.pruned[0].model,
    }
    floats = [
        export_float(name, model, folder / f"{name}.onnx", parity_rows, test_inputs)
        for name, model in models.items()
    ]
    for c in floats:
        for p in c.parity:
            if p.requested_precision == "f32" and (
                p.max_abs_difference > settings.repository.parity_tolerance
            ):
                raise BuildError(
                    f"{c.name}: {p.runtime} ({p.execution_precision}) differs from PyTorch by "
                    f"{p.max_abs_difference:.2e} > {settings.repository.parity_tolerance:g}"
                )
    baseline_aucs = [b.record["test_auc"] for b in trained.baselines]
    floats[0].servable, floats[0].gate = True, "the reference"
    for candidate, seeds in zip(floats[1:], (trained.students, trained.pruned), strict=True):
        verdict = structural_gate(
            baseline_aucs, [s.record["test_auc"] for s in seeds], settings.gate
        )
        candidate.servable, candidate.gate = verdict.passed, verdict.reason
        candidate.derived_from = BASELINE_VARIANT
    floats[2].derived_from = "light-fp32"
    return floats


def single_thread_latency(path: Path, inputs: dict[str, np.ndarray], settings: Settings) -> float:
    session = OnnxRuntimeSession(path, intra_op_threads=1)
    rows = {k: v[:256] for k, v in inputs.items()}
    timing = benchmark(
        [Runner("", "", "", session.run)],
        rows,
        settings.benchmark.model_copy(update={"batch_rows": (256,)}),
    )
    return timing[0].median_seconds


def derive_numerics(
    settings: Settings, source: Candidate, splits: Splits, folder: Path
) -> list[Candidate]:
    """INT8 (ONNX Runtime, OpenVINO), the float IR and FP16 from `source`, each gated against it."""
    test_inputs = as_inputs(splits.test)
    labels = splits.test.labels
    calibration = {
        k: v[: settings.quantization.calibration_rows] for k, v in as_inputs(splits.train).items()
    }
    stem = source.name.removesuffix("-fp32")

    # Embedding gathers quantized or kept float: both measured, the better published.
    onnx_int8 = []
    for gather in (False, True):
        path = folder / f"{stem}-int8{'-gather' if gather else ''}.onnx"
        quantize_onnxruntime_int8(source.path, path, calibration, quantize_gather=gather)
        candidate = derived(
            source, f"{stem}-int8", path, "int8", OnnxRuntimeSession(path), test_inputs
        )
        verdict = numerics_gate(labels, source.scores, candidate.scores, settings.gate)
        candidate.servable, candidate.gate = verdict.passed, verdict.reason
        onnx_int8.append((candidate, gather, single_thread_latency(path, test_inputs, settings)))
    ranked = sorted(onnx_int8, key=lambda c: (not c[0].servable, c[2]))
    chosen, gather, _ = ranked[0]
    for other, _, _ in ranked[1:]:
        other.path.unlink()
    chosen.gate += (
        f"; embedding gather {'quantized' if gather else 'kept float'} "
        "(both measured: "
        + ", ".join(
            f"{'int8' if g else 'float'} gather {t * 1000:.3f} ms at 256 rows, "
            f"AUC {roc_auc(labels, c.scores):.4f}"
            for c, g, t in onnx_int8
        )
        + ")"
    )
    final = folder / f"{stem}-int8.onnx"
    chosen.path.rename(final)
    chosen.path = final

    float_ir, int8_ir = folder / f"{stem}-openvino-fp32.xml", folder / f"{stem}-openvino-int8.xml"
    convert_openvino(source.path, float_ir, int8_ir, calibration)
    openvino = [
        # The float IR with OpenVINO's default precision: BF16 on CPUs with AMX/AVX-512 BF16.
        derived(
            source,
            f"{stem}-openvino",
            float_ir,
            "fp32",
            OpenVinoSession(float_ir, None),
            test_inputs,
        ),
        derived(
            source,
            f"{stem}-openvino-int8",
            int8_ir,
            "int8",
            OpenVinoSession(int8_ir, None),
            test_inputs,
        ),
    ]
    if openvino[0].scored_precision == "bf16":
        openvino[0].precision = "bf16"

    fp16_path = folder / f"{stem}-fp16.onnx"
    convert_float16(source.path, fp16_path)
    # Scored with ONNX Runtime's CPU kernels for FP16 here; served by the CUDA provider.
    fp16 = derived(
        source,
        f"{stem}-fp16",
        fp16_path,
        "fp16",
        OnnxRuntimeSession(fp16_path),
        test_inputs,
        device="gpu",
    )
    for candidate in [*openvino, fp16]:
        verdict = numerics_gate(labels, source.scores, candidate.scores, settings.gate)
        candidate.servable, candidate.gate = verdict.passed, verdict.reason
    return [chosen, *openvino, fp16]


def latency_runners(trained: Trained, candidates: list[Candidate]) -> list[Runner]:
    """Single-thread runners: PyTorch for the float models, then every file in its runtimes."""
    runners = []
    torch_models = {
        BASELINE_VARIANT: trained.baselines[0].model,
        "light-fp32": trained.students[0].model,
        "pruned-fp32": trained.pruned[0].model,
    }
    for name, model in torch_models.items():
        runners.append(Runner(name, "pytorch", "f32", torch_runner(model)))
    for c in candidates:
        if c.format == "openvino-ir":
            session = OpenVinoSession(c.path, inference_precision=None, threads=1)
            runners.append(Runner(c.name, "openvino", c.scored_precision, session.run))
            continue
        ort = OnnxRuntimeSession(c.path, intra_op_threads=1)
        runners.append(Runner(c.name, "onnxruntime", c.scored_precision, ort.run))
        # OpenVINO runs every ONNX file too: FP32 ones as asked (f32), the others in its default.
        hint: OpenVinoPrecision | None = "f32" if c.precision == "fp32" else None
        ov = OpenVinoSession(c.path, inference_precision=hint, threads=1)
        label = ov.execution_precision if hint else f"{c.precision} file, {ov.execution_precision}"
        runners.append(Runner(c.name, "openvino", label, ov.run))
    return runners


def torch_runner(model: DCNv2) -> Any:
    def run(inputs: dict[str, np.ndarray]) -> object:
        with torch.inference_mode():
            categorical = torch.from_numpy(inputs[CATEGORICAL_INPUT])
            return model(categorical, torch.from_numpy(inputs[DENSE_INPUT]))

    return run


def reference_batch(timings: list[Timing]) -> int:
    sizes = {t.batch_rows for t in timings}
    return 256 if 256 in sizes else max(sizes)


def default_variants(candidates: list[Candidate], timings: list[Timing]) -> dict[str, str]:
    """CPU: of the servable CPU variants both CPU runtimes run (so an OpenVINO and an ONNX
    Runtime device can both serve the default), the one with the lowest latency at the reference
    batch in either. GPU: the FP16 variant when servable, else the best float one."""
    rows = reference_batch(timings)
    servable = {c.name: c for c in candidates if c.servable}
    both = {"onnxruntime", "openvino"}
    cpu = min(
        (t for t in timings if t.batch_rows == rows and t.variant in servable
         and servable[t.variant].device == "cpu" and t.runtime in servable[t.variant].runtimes
         and both <= set(servable[t.variant].runtimes)),
        key=lambda t: t.median_seconds,
    )  # fmt: skip
    gpu = next((c.name for c in candidates if c.servable and c.device == "gpu"), None)
    float_default = next(c.name for c in candidates if c.servable and c.precision == "fp32")
    return {"cpu": cpu.variant, "gpu": gpu or float_default}


def new_staging(settings: Settings) -> Path:
    """An empty staging folder beside the version the build writes: nothing half-written is
    ever at the version's own path."""
    s_repo = settings.repository
    staging = s_repo.root / s_repo.model_name / f".staging-{s_repo.version}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def publish(staging: Path, settings: Settings) -> Path:
    """The staged version moved into place, replacing any earlier build of it."""
    s_repo = settings.repository
    final = s_repo.root / s_repo.model_name / str(s_repo.version)
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    return final


def build(
    settings: Settings, movielens_path: Path | None = None, allow_download: bool = True
) -> Path:
    """Build the repository version named by settings and return its folder."""
    started = time.monotonic()
    s_data, s_repo = settings.data, settings.repository
    log.info("stage 1/6: data (MovieLens-100K)")
    raw = movielens.load(movielens_path or s_data.movielens_path, s_data.cache_dir, allow_download)
    split = random_split(
        len(raw.ratings), s_data.validation_fraction, s_data.test_fraction, s_data.split_seed
    )
    data = features.encode(raw, split)
    splits = Splits(*(examples(data, r) for r in (split.train, split.validation, split.test)))
    log.info(
        "split %d / %d / %d interactions (train / validation / test, seed %d)",
        len(split.train), len(split.validation), len(split.test), s_data.split_seed,
    )  # fmt: skip
    log.info("stage 2/6: training (reference, baseline, students, pruning)")
    sizes = list(data.vocabulary_sizes.values())
    references = [popularity_reference(data, splits), logistic_reference(settings, sizes, splits)]
    trained = train_all(settings, sizes, splits)

    staging = new_staging(settings)
    log.info("stage 3/6: ONNX export and runtime parity")
    floats = export_floats(settings, trained, splits, staging)
    best_float = next(c for c in reversed(floats) if c.servable)
    log.info("stage 4/6: INT8, FP16 and OpenVINO variants of %s", best_float.name)
    candidates = floats + derive_numerics(settings, best_float, splits, staging)
    for c in candidates:
        if c.servable:
            log.info("gate: %s passes: %s", c.name, c.gate)
        else:
            log.warning("gate: %s is not servable: %s", c.name, c.gate)
    labels = splits.test.labels
    bootstrap = {
        c.name: paired_bootstrap_auc_difference(
            labels, floats[0].scores, c.scores, settings.gate.bootstrap_rounds, seed=0
        )
        for c in candidates[1:]
    }
    log.info("stage 5/6: single-thread latency of every variant")
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    timings = benchmark(
        latency_runners(trained, candidates), as_inputs(splits.test), settings.benchmark
    )
    torch.set_num_threads(torch_threads)
    log.info("stage 6/6: writing the repository version")
    write_data_files(data, staging)

    created_at = datetime.now(UTC).isoformat(timespec="seconds")
    variants = [to_variant(c, staging, labels) for c in candidates]
    defaults = default_variants(candidates, timings)
    manifest = build_manifest(settings, raw, data, staging, variants, defaults, created_at)
    repository.write_manifest(staging, manifest)
    latency_chart(timings, staging / CHART, f"{s_repo.model_name} v{s_repo.version}")
    report = build_report(
        settings, raw, data, manifest, trained, references, bootstrap, timings, started, staging
    )
    (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (staging / "report.md").write_text(render_markdown(report), encoding="utf-8")

    final = publish(staging, settings)
    repository.open_version(s_repo.root, s_repo.model_name, s_repo.version)  # validate the result
    return final


def to_variant(c: Candidate, folder: Path, labels: npt.NDArray[np.float32]) -> repository.Variant:
    weights = c.weights_path
    return repository.Variant(
        name=c.name,
        file=repository.file_ref(folder, c.path.name),
        weights_file=repository.file_ref(folder, weights.name) if weights else None,
        format=c.format,
        precision=c.precision,
        device=c.device,
        runtimes=c.runtimes,
        derived_from=c.derived_from,
        parameters=c.parameters,
        flops_per_row=c.flops_per_row,
        test_auc=roc_auc(labels, c.scores),
        test_log_loss=log_loss(labels, c.scores),
        scored_with=repository.RuntimePrecision(
            runtime=c.scored_runtime, requested="served", executed=c.scored_precision
        ),
        servable=c.servable,
        gate=c.gate,
        parity=tuple(
            repository.RuntimePrecision(
                runtime=p.runtime,
                requested=p.requested_precision,
                executed=p.execution_precision,
                max_abs_difference_vs_pytorch=p.max_abs_difference,
            )
            for p in c.parity
        ),
    )

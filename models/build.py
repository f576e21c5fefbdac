"""Build the default model repository: data, split, baseline training over seeds, export, checks.

Writes `<root>/<model>/<version>/` through a staging folder, so a failed build never leaves a
half-written version behind.
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

from config import Settings
from models import features, movielens, repository
from models.architectures import DCNv2, LogisticRegression, parameter_count
from models.build_record import build_manifest, build_report
from models.export import ParityResult, check_parity, export_onnx, graph_statistics
from models.feature_tables import CATEGORICAL_INPUT, DENSE_INPUT
from models.metrics import log_loss, roc_auc
from models.report import render_markdown
from models.runtime import OnnxRuntimeSession
from models.split import random_split
from models.train import Examples, evaluate, fit

log = logging.getLogger(__name__)

BASELINE_VARIANT = "baseline-fp32"
REFERENCE_LR_LEARNING_RATE = 0.01
POPULARITY_PRIOR_ROWS = 10.0


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


def popularity_scores(data: features.EncodedDataset) -> npt.NDArray[np.float64]:
    """Each test row scored by its item's smoothed positive rate in training."""
    train = data.split.train
    items = len(data.tables.item_ids) + 1
    positives = np.bincount(data.item_rows[train], weights=data.labels[train], minlength=items)
    counts = np.bincount(data.item_rows[train], minlength=items)
    prior = float(data.labels[train].mean())
    rate = (positives + POPULARITY_PRIOR_ROWS * prior) / (counts + POPULARITY_PRIOR_ROWS)
    return np.asarray(rate[data.item_rows[data.split.test]], dtype=np.float64)


def new_baseline(settings: Settings, data: features.EncodedDataset, seed: int) -> DCNv2:
    torch.manual_seed(seed)
    t = settings.training
    sizes = list(data.vocabulary_sizes.values())
    dense = len(data.tables.dense_fields)
    return DCNv2(sizes, dense, t.embedding_dim, t.cross_layers, t.mlp_units, t.dropout)


def score_references(
    settings: Settings, data: features.EncodedDataset, splits: Splits
) -> list[dict[str, Any]]:
    """Item popularity and a logistic regression on the same features, as sanity anchors."""
    popularity = popularity_scores(data)
    seed = settings.training.seeds[0]
    torch.manual_seed(seed)
    lr = LogisticRegression(list(data.vocabulary_sizes.values()), len(data.tables.dense_fields))
    lr_settings = settings.training.model_copy(update={"learning_rate": REFERENCE_LR_LEARNING_RATE})
    fit(lr, splits.train, splits.validation, lr_settings, seed)
    lr_auc, lr_loss = evaluate(lr, splits.test)
    return [
        {
            "name": "item popularity (smoothed positive rate)",
            "test_auc": roc_auc(splits.test.labels, popularity),
            "test_log_loss": log_loss(splits.test.labels, popularity),
        },
        {
            "name": "logistic regression, same features",
            "test_auc": lr_auc,
            "test_log_loss": lr_loss,
        },
    ]


def train_baselines(
    settings: Settings, data: features.EncodedDataset, splits: Splits
) -> tuple[DCNv2, list[dict[str, Any]]]:
    """One baseline per seed; returns the first seed's model (published) and every record."""
    records: list[dict[str, Any]] = []
    models: list[DCNv2] = []
    for seed in settings.training.seeds:
        model = new_baseline(settings, data, seed)
        result = fit(model, splits.train, splits.validation, settings.training, seed)
        auc, loss = evaluate(model, splits.test)
        log.info("seed %d: test AUC %.4f, log loss %.4f", seed, auc, loss)
        records.append({"seed": seed, **asdict(result), "test_auc": auc, "test_log_loss": loss})
        models.append(model)
    return models[0], records


def export_checked(
    settings: Settings, model: DCNv2, data: features.EncodedDataset, path: Path
) -> list[ParityResult]:
    """Export to ONNX and refuse the build unless FP32 runtimes reproduce PyTorch."""
    config = settings.repository
    export_onnx(model, path, len(data.vocabulary_sizes), len(data.tables.dense_fields))
    weights = graph_statistics(path).parameters
    if weights != parameter_count(model):
        raise BuildError(
            f"exported graph has {weights} weights, the model {parameter_count(model)}"
        )
    parity = check_parity(model, path, examples(data, data.split.test[: config.parity_rows]))
    for p in parity:
        if p.requested_precision == "f32" and p.max_abs_difference > config.parity_tolerance:
            raise BuildError(
                f"{p.runtime} ({p.execution_precision}) differs from PyTorch by "
                f"{p.max_abs_difference:.2e} > {config.parity_tolerance:g}"
            )
    return parity


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
    vocabularies = {name: list(v.tokens) for name, v in data.vocabularies.items()}
    (folder / repository.VOCABULARIES).write_text(json.dumps(vocabularies), encoding="utf-8")


def build(
    settings: Settings, movielens_path: Path | None = None, allow_download: bool = True
) -> Path:
    """Build the default repository version and return its folder."""
    started = time.monotonic()
    s_data, s_repo = settings.data, settings.repository
    raw = movielens.load(movielens_path or s_data.movielens_path, s_data.cache_dir, allow_download)
    split = random_split(
        len(raw.ratings), s_data.validation_fraction, s_data.test_fraction, s_data.split_seed
    )
    data = features.encode(raw, split)
    splits = Splits(*(examples(data, r) for r in (split.train, split.validation, split.test)))
    references = score_references(settings, data, splits)
    published, seed_records = train_baselines(settings, data, splits)

    staging = s_repo.root / s_repo.model_name / f".staging-{s_repo.version}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model_file = staging / f"{BASELINE_VARIANT}.onnx"
    parity = export_checked(settings, published, data, model_file)
    scores = OnnxRuntimeSession(model_file).run(data.inputs(split.test))
    write_data_files(data, staging)

    created_at = datetime.now(UTC).isoformat(timespec="seconds")
    variant = repository.Variant(
        name=BASELINE_VARIANT,
        file=repository.file_ref(staging, model_file.name),
        format="onnx",
        precision="fp32",
        parameters=parameter_count(published),
        flops_per_row=graph_statistics(model_file).flops_per_row,
        test_auc=roc_auc(splits.test.labels, scores),
        test_log_loss=log_loss(splits.test.labels, scores),
        servable=True,
        runtimes=tuple(
            repository.RuntimePrecision(
                runtime=p.runtime,
                requested=p.requested_precision,
                executed=p.execution_precision,
                max_abs_difference_vs_pytorch=p.max_abs_difference,
            )
            for p in parity
        ),
    )
    manifest = build_manifest(settings, raw, data, staging, [variant], created_at)
    repository.write_manifest(staging, manifest)
    report = build_report(
        settings, raw, data, manifest, seed_records, references, parity, started, staging
    )
    (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (staging / "report.md").write_text(render_markdown(report), encoding="utf-8")

    final = s_repo.root / s_repo.model_name / str(s_repo.version)
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    repository.open_version(s_repo.root, s_repo.model_name, s_repo.version)  # validate the result
    return final

"""Build the default model repository: data, split, baseline training over seeds, export, checks.

Writes `<root>/<model>/<version>/` through a staging folder, so a failed build never leaves a
half-written version behind.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from config import Settings
from models import features, movielens, repository
from models.architectures import DCNv2, LogisticRegression, parameter_count
from models.export import OUTPUT_NAME, check_parity, export_onnx, graph_statistics
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
METRIC = (
    "ROC AUC (ties count one half) and log loss of the predicted probability on the test split, "
    "each model scored once after early stopping on validation AUC."
)


class BuildError(RuntimeError):
    """The build produced something that must not be published (e.g. failed export parity)."""


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


def build(
    settings: Settings, movielens_path: Path | None = None, allow_download: bool = True
) -> Path:
    """Build the default repository version and return its folder."""
    started = time.monotonic()
    s_data, s_train, s_repo = settings.data, settings.training, settings.repository
    raw = movielens.load(movielens_path or s_data.movielens_path, s_data.cache_dir, allow_download)
    split = random_split(
        len(raw.ratings), s_data.validation_fraction, s_data.test_fraction, s_data.split_seed
    )
    data = features.encode(raw, split)
    train, validation, test = (
        examples(data, r) for r in (split.train, split.validation, split.test)
    )
    sizes = list(data.vocabulary_sizes.values())
    dense_width = len(data.tables.dense_fields)

    references = [
        {
            "name": "item popularity (smoothed positive rate)",
            "test_auc": roc_auc(test.labels, popularity_scores(data)),
            "test_log_loss": log_loss(test.labels, popularity_scores(data)),
        }
    ]
    torch.manual_seed(s_train.seeds[0])
    lr_model = LogisticRegression(sizes, dense_width)
    lr_settings = s_train.model_copy(update={"learning_rate": REFERENCE_LR_LEARNING_RATE})
    fit(lr_model, train, validation, lr_settings, s_train.seeds[0])
    lr_auc, lr_loss = evaluate(lr_model, test)
    references.append(
        {"name": "logistic regression, same features", "test_auc": lr_auc, "test_log_loss": lr_loss}
    )

    seeds: list[dict[str, Any]] = []
    published: DCNv2 | None = None
    for seed in s_train.seeds:
        model = new_baseline(settings, data, seed)
        result = fit(model, train, validation, s_train, seed)
        auc, loss = evaluate(model, test)
        log.info("seed %d: test AUC %.4f, log loss %.4f", seed, auc, loss)
        seeds.append({"seed": seed, **asdict(result), "test_auc": auc, "test_log_loss": loss})
        published = published or model
    assert published is not None  # seeds is validated non-empty

    staging = s_repo.root / s_repo.model_name / f".staging-{s_repo.version}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model_file = f"{BASELINE_VARIANT}.onnx"
    export_onnx(published, staging / model_file, len(sizes), dense_width)
    stats = graph_statistics(staging / model_file)
    if stats.parameters != parameter_count(published):
        raise BuildError(f"exported graph has {stats.parameters} weights, model has more/less")

    parity_rows = split.test[: s_repo.parity_rows]
    parity = check_parity(published, staging / model_file, examples(data, parity_rows))
    for p in parity:
        if p.requested_precision == "f32" and p.max_abs_difference > s_repo.parity_tolerance:
            raise BuildError(
                f"{p.runtime} ({p.execution_precision}) differs from PyTorch by "
                f"{p.max_abs_difference:.2e} > {s_repo.parity_tolerance:g}"
            )
    exported_scores = OnnxRuntimeSession(staging / model_file).run(data.inputs(split.test))
    variant_auc = roc_auc(test.labels, exported_scores)
    variant_loss = log_loss(test.labels, exported_scores)

    data.tables.save(staging / repository.FEATURE_TABLES)
    with (staging / repository.TEST_SPLIT).open("wb") as f:
        np.savez(
            f,
            user_rows=data.user_rows[split.test],
            item_rows=data.item_rows[split.test],
            labels=data.labels[split.test],
        )
    vocabularies = {name: list(v.tokens) for name, v in data.vocabularies.items()}
    (staging / repository.VOCABULARIES).write_text(json.dumps(vocabularies), encoding="utf-8")

    created_at = datetime.now(UTC).isoformat(timespec="seconds")
    variant = repository.Variant(
        name=BASELINE_VARIANT,
        file=repository.file_ref(staging, model_file),
        format="onnx",
        precision="fp32",
        parameters=stats.parameters,
        flops_per_row=stats.flops_per_row,
        test_auc=variant_auc,
        test_log_loss=variant_loss,
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
    split_spec = repository.SplitSpec(
        method="random by interaction",
        seed=split.seed,
        fractions=(
            1 - s_data.validation_fraction - s_data.test_fraction,
            s_data.validation_fraction,
            s_data.test_fraction,
        ),
        rows=split.sizes,
    )
    manifest = repository.Manifest(
        schema_version=repository.SCHEMA_VERSION,
        model_name=s_repo.model_name,
        model_version=s_repo.version,
        created_at=created_at,
        dataset=repository.Dataset(
            name="MovieLens-100K",
            source=raw.source,
            interactions=len(raw.ratings),
            users=len(raw.users),
            items=len(raw.items),
            label="rating >= 4",
        ),
        split=split_spec,
        inputs=(
            repository.TensorSpec(name=CATEGORICAL_INPUT, datatype="INT64", shape=(-1, len(sizes))),
            repository.TensorSpec(name=DENSE_INPUT, datatype="FP32", shape=(-1, dense_width)),
        ),
        outputs=(repository.TensorSpec(name=OUTPUT_NAME, datatype="FP32", shape=(-1,)),),
        categorical_fields=data.tables.categorical_fields,
        dense_fields=data.tables.dense_fields,
        vocabulary_sizes=data.vocabulary_sizes,
        feature_tables=repository.file_ref(staging, repository.FEATURE_TABLES),
        test_split=repository.file_ref(staging, repository.TEST_SPLIT),
        vocabularies=repository.file_ref(staging, repository.VOCABULARIES),
        variants=(variant,),
        default_variants={"cpu": BASELINE_VARIANT, "gpu": BASELINE_VARIANT},
    )
    repository.write_manifest(staging, manifest)

    test_aucs = [s["test_auc"] for s in seeds]
    report = {
        "model_name": s_repo.model_name,
        "model_version": s_repo.version,
        "created_at": created_at,
        "protocol": {
            "dataset": "MovieLens-100K",
            "source": raw.source,
            "interactions": len(raw.ratings),
            "users": len(raw.users),
            "items": len(raw.items),
            "label": "rating >= 4 is positive, 1-3 negative",
            "positive_rate": float(raw.labels.mean()),
            "split": "random 8:1:1 by interaction",
            "split_seed": split.seed,
            "split_rows": split.sizes,
            "metric": METRIC,
        },
        "baseline": {
            "architecture": (
                f"DCN-v2 (parallel), {len(sizes)} categorical fields + genre bag, embeddings "
                f"{s_train.embedding_dim}, {s_train.cross_layers} full-rank cross layers, MLP "
                f"{list(s_train.mlp_units)} with dropout {s_train.dropout}, "
                f"{parameter_count(published):,} parameters"
            ),
            "training": (
                f"Adam lr {s_train.learning_rate:g}, batch {s_train.batch_rows}, L2 "
                f"{s_train.embedding_l2:g} on the embeddings a batch touches, embeddings "
                f"initialised N(0, 0.01^2), early stopping on validation AUC (patience "
                f"{s_train.patience_epochs}, at most {s_train.max_epochs} epochs)"
            ),
            "seeds": seeds,
            "summary": {
                "test_auc_mean": statistics.fmean(test_aucs),
                "test_auc_std": statistics.pstdev(test_aucs),
                "test_auc_min": min(test_aucs),
                "test_auc_max": max(test_aucs),
                "test_log_loss_mean": statistics.fmean(s["test_log_loss"] for s in seeds),
            },
            "published_seed": s_train.seeds[0],
        },
        "references": references,
        "variants": [
            {
                **variant.model_dump(mode="json", include={"name", "format", "precision"}),
                "parameters": variant.parameters,
                "flops_per_row": variant.flops_per_row,
                "file_bytes": (staging / model_file).stat().st_size,
                "test_auc": variant.test_auc,
                "test_log_loss": variant.test_log_loss,
                "servable": variant.servable,
            }
        ],
        "parity_rows": len(parity_rows),
        "parity_tolerance": s_repo.parity_tolerance,
        "parity": [
            {
                "runtime": p.runtime,
                "requested": p.requested_precision,
                "executed": p.execution_precision,
                "max_abs_difference": p.max_abs_difference,
            }
            for p in parity
        ],
        "build_seconds": time.monotonic() - started,
    }
    (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (staging / "report.md").write_text(render_markdown(report), encoding="utf-8")

    final = s_repo.root / s_repo.model_name / str(s_repo.version)
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    repository.open_version(
        s_repo.root, s_repo.model_name, s_repo.version
    )  # validate what we wrote
    return final

"""What a build writes down: the manifest (the serving contract) and the report's JSON document."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from config import Settings
from models import repository
from models.export import OUTPUT_NAME, ParityResult
from models.feature_tables import CATEGORICAL_INPUT, DENSE_INPUT
from models.features import EncodedDataset
from models.movielens import MovieLens

SPLIT_METHOD = "random 8:1:1 by interaction"
LABEL = "rating >= 4 is positive, 1-3 negative"
VARIANT_REPORT_FIELDS = {
    "name", "format", "precision", "parameters", "flops_per_row", "test_auc", "test_log_loss",
    "servable",
}  # fmt: skip
METRIC = (
    "ROC AUC (ties count one half) and log loss of the predicted probability on the test split, "
    "each model scored once after early stopping on validation AUC."
)


def build_manifest(
    settings: Settings,
    raw: MovieLens,
    data: EncodedDataset,
    folder: Path,
    variants: Sequence[repository.Variant],
    created_at: str,
) -> repository.Manifest:
    s_data, s_repo = settings.data, settings.repository
    default = variants[0].name
    fractions = (
        1 - s_data.validation_fraction - s_data.test_fraction,
        s_data.validation_fraction,
        s_data.test_fraction,
    )
    return repository.Manifest(
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
            label=LABEL,
        ),
        split=repository.SplitSpec(
            method=SPLIT_METHOD, seed=data.split.seed, fractions=fractions, rows=data.split.sizes
        ),
        inputs=(
            repository.TensorSpec(
                name=CATEGORICAL_INPUT, datatype="INT64", shape=(-1, len(data.vocabulary_sizes))
            ),
            repository.TensorSpec(
                name=DENSE_INPUT, datatype="FP32", shape=(-1, len(data.tables.dense_fields))
            ),
        ),
        outputs=(repository.TensorSpec(name=OUTPUT_NAME, datatype="FP32", shape=(-1,)),),
        categorical_fields=data.tables.categorical_fields,
        dense_fields=data.tables.dense_fields,
        vocabulary_sizes=data.vocabulary_sizes,
        feature_tables=repository.file_ref(folder, repository.FEATURE_TABLES),
        test_split=repository.file_ref(folder, repository.TEST_SPLIT),
        vocabularies=repository.file_ref(folder, repository.VOCABULARIES),
        variants=tuple(variants),
        default_variants={"cpu": default, "gpu": default},
    )


def build_report(
    settings: Settings,
    raw: MovieLens,
    data: EncodedDataset,
    manifest: repository.Manifest,
    seeds: list[dict[str, Any]],
    references: list[dict[str, Any]],
    parity: list[ParityResult],
    started: float,
    folder: Path,
) -> dict[str, Any]:
    t = settings.training
    test_aucs = [s["test_auc"] for s in seeds]
    parameters = manifest.variants[0].parameters
    return {
        "model_name": manifest.model_name,
        "model_version": manifest.model_version,
        "created_at": manifest.created_at,
        "protocol": {
            "dataset": manifest.dataset.name,
            "source": raw.source,
            "interactions": manifest.dataset.interactions,
            "users": manifest.dataset.users,
            "items": manifest.dataset.items,
            "label": LABEL,
            "positive_rate": float(raw.labels.mean()),
            "split": SPLIT_METHOD,
            "split_seed": data.split.seed,
            "split_rows": data.split.sizes,
            "metric": METRIC,
        },
        "baseline": {
            "architecture": (
                f"DCN-v2 (parallel), {len(data.vocabulary_sizes)} categorical fields + genre bag, "
                f"embeddings {t.embedding_dim}, {t.cross_layers} full-rank cross layers, MLP "
                f"{list(t.mlp_units)} with dropout {t.dropout}, {parameters:,} parameters"
            ),
            "training": (
                f"Adam lr {t.learning_rate:g}, batch {t.batch_rows}, L2 {t.embedding_l2:g} on the "
                "embeddings a batch touches, embeddings initialised N(0, 0.01^2), early stopping "
                f"on validation AUC (patience {t.patience_epochs}, at most {t.max_epochs} epochs)"
            ),
            "seeds": seeds,
            "summary": {
                "test_auc_mean": statistics.fmean(test_aucs),
                "test_auc_std": statistics.pstdev(test_aucs),
                "test_auc_min": min(test_aucs),
                "test_auc_max": max(test_aucs),
                "test_log_loss_mean": statistics.fmean(s["test_log_loss"] for s in seeds),
            },
            "published_seed": t.seeds[0],
        },
        "references": references,
        "variants": [
            {
                **v.model_dump(mode="json", include=VARIANT_REPORT_FIELDS),
                "file_bytes": (folder / v.file.file).stat().st_size,
            }
            for v in manifest.variants
        ],
        "parity_rows": parity[0].rows,
        "parity_tolerance": settings.repository.parity_tolerance,
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

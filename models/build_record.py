"""What a build writes down: the manifest (the serving contract) and the report's JSON document."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from config.settings import Settings
from models.artifacts import repository
from models.artifacts.feature_tables import CATEGORICAL_INPUT, DENSE_INPUT
from models.benchmark import Timing
from models.export import OUTPUT_NAME
from models.features import EncodedDataset
from models.gate import BootstrapInterval
from models.movielens import MovieLens

SPLIT_METHOD = "random 8:1:1 by interaction"
LABEL = "rating >= 4 is positive, 1-3 negative"
VARIANT_REPORT_FIELDS = {
    "name", "format", "precision", "device", "derived_from", "parameters", "flops_per_row",
    "test_auc", "test_log_loss", "servable", "gate",
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
    default_variants: dict[str, str],
    created_at: str,
) -> repository.Manifest:
    s_data, s_repo = settings.data, settings.repository
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
        seen_items=repository.file_ref(folder, repository.SEEN_ITEMS),
        variants=tuple(variants),
        default_variants=default_variants,
    )


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values)


def _seed_summary(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    aucs = [r["test_auc"] for r in records]
    return {
        "test_auc_mean": _mean(aucs),
        "test_auc_std": statistics.pstdev(aucs),
        "test_auc_min": min(aucs),
        "test_auc_max": max(aucs),
        "test_log_loss_mean": _mean([r["test_log_loss"] for r in records]),
    }


def _file_bytes(folder: Path, variant: repository.Variant) -> int:
    files = [variant.file] + ([variant.weights_file] if variant.weights_file else [])
    return sum((folder / f.file).stat().st_size for f in files)


def _targets(manifest: repository.Manifest, timings: Sequence[Timing], rows: int) -> dict[str, Any]:
    """The issue's targets, computed from the measured figures."""
    at = {(t.variant, t.runtime): t.median_seconds for t in timings if t.batch_rows == rows}
    baseline = manifest.variants[0]
    cpu = manifest.variant(manifest.default_variants["cpu"])
    runtime, seconds = min(
        ((r, s) for (v, r), s in at.items() if v == cpu.name and r in cpu.runtimes),
        key=lambda item: item[1],
    )
    int8 = [v for v in manifest.variants if v.precision == "int8"]
    return {
        "batch_rows": rows,
        "best_cpu_variant": cpu.name,
        "best_cpu_runtime": runtime,
        "best_cpu_seconds": seconds,
        "latency_vs_baseline_pytorch": seconds / at[(baseline.name, "pytorch")],
        "latency_vs_baseline_same_runtime": seconds / at[(baseline.name, runtime)],
        "parameters_vs_baseline": cpu.parameters / baseline.parameters,
        "end_to_end": [
            {"variant": v.name, "test_auc": v.test_auc, "auc_delta": v.test_auc - baseline.test_auc}
            for v in int8
        ],
    }


def build_report(
    settings: Settings,
    raw: MovieLens,
    data: EncodedDataset,
    manifest: repository.Manifest,
    trained: Any,
    references: list[dict[str, Any]],
    bootstrap: dict[str, BootstrapInterval],
    timings: Sequence[Timing],
    started: float,
    folder: Path,
) -> dict[str, Any]:
    t, st = settings.training, settings.student
    baseline = manifest.variants[0]
    rows = 256 if 256 in {x.batch_rows for x in timings} else max(x.batch_rows for x in timings)
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
                f"{list(t.mlp_units)} with dropout {t.dropout}, {baseline.parameters:,} parameters"
            ),
            "training": (
                f"Adam lr {t.learning_rate:g}, batch {t.batch_rows}, L2 {t.embedding_l2:g} on the "
                "embeddings a batch touches, embeddings initialised N(0, 0.01^2), early stopping "
                f"on validation AUC (patience {t.patience_epochs}, at most {t.max_epochs} epochs)"
            ),
            "seeds": [b.record for b in trained.baselines],
            "summary": _seed_summary([b.record for b in trained.baselines]),
            "published_seed": t.seeds[0],
        },
        "references": references,
        "student": {
            "architecture": (
                f"DCN-v2, embeddings {st.embedding_dim}, {st.cross_layers} cross layer(s), MLP "
                f"{list(st.mlp_units)}, dropout {st.dropout}"
            ),
            "distillation": (
                f"loss = {1 - st.distillation_weight:g} x BCE(labels) + "
                f"{st.distillation_weight:g} x BCE(baseline seed {t.seeds[0]} probabilities)"
            ),
            "distilled": [s.record for s in trained.students],
            "distilled_summary": _seed_summary([s.record for s in trained.students]),
            "labels_only": [s.record for s in trained.plain_students],
            "labels_only_summary": _seed_summary([s.record for s in trained.plain_students]),
        },
        "pruning": {
            "criterion": (
                "MLP neuron: mean |activation| x L2 norm of outgoing weights; embedding dimension "
                "(removed from every field): spread of x0 x norm of the weights reading it"
            ),
            "seeds": [p.record for p in trained.pruned],
            "summary": _seed_summary([p.record for p in trained.pruned]),
        },
        "variants": [
            {
                **v.model_dump(mode="json", include=VARIANT_REPORT_FIELDS),
                "scored_with": f"{v.scored_with.runtime} {v.scored_with.executed}",
                "file_bytes": _file_bytes(folder, v),
                "auc_delta": v.test_auc - baseline.test_auc,
                "log_loss_delta": v.test_log_loss - baseline.test_log_loss,
                "bootstrap_auc_difference": (
                    asdict(bootstrap[v.name]) if v.name in bootstrap else None
                ),
            }
            for v in manifest.variants
        ],
        "default_variants": manifest.default_variants,
        "parity_rows": settings.repository.parity_rows,
        "parity_tolerance": settings.repository.parity_tolerance,
        "parity": [
            {
                "variant": v.name,
                "runtime": p.runtime,
                "requested": p.requested,
                "executed": p.executed,
                "max_abs_difference": p.max_abs_difference_vs_pytorch,
            }
            for v in manifest.variants
            for p in v.parity
        ],
        "latency": [{**asdict(x), "rows_per_second": x.rows_per_second} for x in timings],
        "targets": _targets(manifest, timings, rows),
        "build_seconds": time.monotonic() - started,
    }

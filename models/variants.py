"""The model-level acceleration steps that retrain: the distilled student and its pruning."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from config.settings import Settings
from models.architectures import DCNv2, parameter_count
from models.prune import PruningStep, shrink
from models.train import Examples, evaluate, fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeedModel:
    seed: int
    model: DCNv2
    record: dict[str, Any]  # training figures and test AUC / log loss, for the report


def new_student(settings: Settings, vocabulary_sizes: list[int], dense: int, seed: int) -> DCNv2:
    torch.manual_seed(seed)
    s = settings.student
    return DCNv2(vocabulary_sizes, dense, s.embedding_dim, s.cross_layers, s.mlp_units, s.dropout)


def train_students(
    settings: Settings,
    vocabulary_sizes: list[int],
    train: Examples,
    validation: Examples,
    test: Examples,
    teacher_probabilities: npt.NDArray[np.float32] | None,
) -> list[SeedModel]:
    """One student per seed, distilled from the teacher (or on labels alone when None)."""
    weight = settings.student.distillation_weight if teacher_probabilities is not None else 0.0
    training = settings.training.model_copy(update={"dropout": settings.student.dropout})
    students = []
    for seed in settings.training.seeds:
        model = new_student(settings, vocabulary_sizes, train.dense.shape[1], seed)
        kind = "student" if teacher_probabilities is not None else "student on labels alone"
        result = fit(model, train, validation, training, seed, None, teacher_probabilities, weight,
                     label=f"{kind}, seed {seed}")  # fmt: skip
        auc, loss = evaluate(model, test)
        log.info("student seed %d (distillation %.2f): test AUC %.4f", seed, weight, auc)
        record = {"seed": seed, **asdict(result), "test_auc": auc, "test_log_loss": loss}
        students.append(SeedModel(seed, model, record))
    return students


def prune_student(
    settings: Settings,
    student: SeedModel,
    train: Examples,
    validation: Examples,
    test: Examples,
    teacher_probabilities: npt.NDArray[np.float32],
) -> SeedModel:
    """Apply the pruning schedule step by step, fine-tuning with distillation after each."""
    p = settings.pruning
    fine_tune = settings.training.model_copy(
        update={
            "learning_rate": p.fine_tune_learning_rate,
            "patience_epochs": p.fine_tune_patience_epochs,
            "dropout": settings.student.dropout,
        }
    )
    rows = slice(0, p.importance_rows)
    categorical = torch.from_numpy(train.categorical[rows])
    dense = torch.from_numpy(train.dense[rows])
    model, steps = student.model, []
    for step in p.steps:
        model = shrink(model, PruningStep(step.embedding_dim, step.mlp_units), categorical, dense)
        before, _ = evaluate(model, validation)
        result = fit(
            model,
            train,
            validation,
            fine_tune,
            student.seed,
            p.fine_tune_epochs,
            teacher_probabilities,
            settings.student.distillation_weight,
            label=f"pruned to {step.embedding_dim} dims, {list(step.mlp_units)}, "
            f"seed {student.seed}",
        )
        log.info(
            "pruning step seed %d: %d parameters, validation AUC %.4f before fine-tuning, %.4f "
            "after", student.seed, parameter_count(model), before, result.validation_auc,
        )  # fmt: skip
        steps.append(
            {
                "embedding_dim": step.embedding_dim,
                "mlp_units": list(step.mlp_units),
                "parameters": parameter_count(model),
                "validation_auc_before_fine_tune": before,
                "validation_auc_after_fine_tune": result.validation_auc,
                "fine_tune_epochs": result.epochs_run,
            }
        )
    auc, loss = evaluate(model, test)
    log.info("pruned seed %d: test AUC %.4f", student.seed, auc)
    record = {"seed": student.seed, "steps": steps, "test_auc": auc, "test_log_loss": loss}
    return SeedModel(student.seed, model, record)

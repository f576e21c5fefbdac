"""Training with early stopping on validation AUC (PyTorch; training only)."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from tqdm import tqdm

from models.architectures import RankingModel
from models.metrics import log_loss, roc_auc
from models.settings import TrainingSettings

log = logging.getLogger(__name__)
SCORING_BATCH_ROWS = 8192


@dataclass(frozen=True)
class Examples:
    """Model inputs and labels for a set of rows."""

    categorical: npt.NDArray[np.int64]
    dense: npt.NDArray[np.float32]
    labels: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class TrainResult:
    best_epoch: int
    epochs_run: int
    validation_auc: float
    validation_history: tuple[float, ...]
    seconds: float


def predict(model: nn.Module, examples: Examples) -> npt.NDArray[np.float32]:
    model.eval()
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(examples), SCORING_BATCH_ROWS):
            end = start + SCORING_BATCH_ROWS
            categorical = torch.from_numpy(examples.categorical[start:end])
            dense = torch.from_numpy(examples.dense[start:end])
            outputs.append(model(categorical, dense).numpy())
    return np.concatenate(outputs).astype(np.float32)


def evaluate(model: nn.Module, examples: Examples) -> tuple[float, float]:
    """(AUC, log loss)."""
    scores = predict(model, examples)
    return roc_auc(examples.labels, scores), log_loss(examples.labels, scores)


def fit(
    model: RankingModel,
    train: Examples,
    validation: Examples,
    settings: TrainingSettings,
    seed: int,
    max_epochs: int | None = None,
    teacher_probabilities: npt.NDArray[np.float32] | None = None,
    distillation_weight: float = 0.0,
    label: str = "training",
) -> TrainResult:
    """Train in place with Adam; keep the weights of the epoch with the best validation AUC.
    While this module's logger shows INFO (the build's default; --quiet turns it off), a progress
    bar named `label` shows the epochs and the validation AUC.

    With `teacher_probabilities` (one per training row) the loss blends the labels with the
    teacher's soft targets: (1 - w) * BCE(labels) + w * BCE(teacher), w = distillation_weight.
    """
    torch.set_num_threads(settings.torch_threads)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    loss_fn = nn.BCEWithLogitsLoss()
    categorical = torch.from_numpy(train.categorical)
    dense = torch.from_numpy(train.dense)
    labels = torch.from_numpy(train.labels)
    soft = None if teacher_probabilities is None else torch.from_numpy(teacher_probabilities)
    best_auc, best_epoch, best_state = -1.0, 0, copy.deepcopy(model.state_dict())
    history: list[float] = []
    started = time.monotonic()
    epochs = max_epochs or settings.max_epochs
    bar = tqdm(total=epochs, desc=label, unit="epoch", leave=False, dynamic_ncols=True,
               disable=not log.isEnabledFor(logging.INFO))  # fmt: skip
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(train), generator=generator)
        for start in range(0, len(train), settings.batch_rows):
            batch = order[start : start + settings.batch_rows]
            logits, embeddings = model.logits_and_embeddings(categorical[batch], dense[batch])
            loss = loss_fn(logits, labels[batch])
            if soft is not None:
                soft_loss = loss_fn(logits, soft[batch])
                loss = (1 - distillation_weight) * loss + distillation_weight * soft_loss
            if settings.embedding_l2:
                loss = loss + settings.embedding_l2 * embeddings.pow(2).sum(dim=(1, 2)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        auc, _ = evaluate(model, validation)
        history.append(auc)
        log.debug("%s epoch %d: validation AUC %.4f", label, epoch, auc)
        bar.update()
        bar.set_postfix_str(f"validation AUC {auc:.4f}")
        if auc > best_auc:
            best_auc, best_epoch, best_state = auc, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= settings.patience_epochs:
            break
    bar.close()
    log.info(
        "%s: best validation AUC %.4f at epoch %d of %d (%.0f s)",
        label, best_auc, best_epoch, len(history), time.monotonic() - started,
    )  # fmt: skip
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(
        best_epoch=best_epoch,
        epochs_run=len(history),
        validation_auc=best_auc,
        validation_history=tuple(history),
        seconds=time.monotonic() - started,
    )

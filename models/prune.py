"""Structured pruning of a DCN-v2: whole MLP neurons and whole embedding dimensions are removed.

The result is a smaller DCNv2 (fewer rows and columns in every weight matrix), not a masked one.
Removing embedding dimension k removes it from every field, so the embedding table, the dense
projection, each cross layer (rows and columns), the MLP's first layer and the head all shrink.

Importance (on a sample of training rows):
- MLP neuron j of layer l: mean |activation_j| times the L2 norm of its outgoing weights;
- embedding dimension k: over every field f, the spread of x0 at position f*E+k times the L2 norm
  of the weights that read that position (cross layers, the MLP's first layer, the head).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.architectures import DCNv2


@dataclass(frozen=True)
class PruningStep:
    embedding_dim: int
    mlp_units: tuple[int, ...]


def mlp_linears(model: DCNv2) -> list[nn.Linear]:
    return [m for m in model.mlp if isinstance(m, nn.Linear)]


def cross_linears(model: DCNv2) -> list[nn.Linear]:
    return [m for m in model.cross if isinstance(m, nn.Linear)]


@torch.no_grad()
def importances(
    model: DCNv2, categorical: torch.Tensor, dense: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(per embedding dimension, per MLP layer per neuron) importance scores."""
    model.eval()
    embeddings = model.embed(categorical)
    x0 = torch.cat([embeddings.flatten(1), model.dense_projection(dense)], dim=1)
    width = x0.shape[1]
    linears = mlp_linears(model)
    head = model.head.weight[0]
    readers = head[:width].abs() + linears[0].weight.norm(dim=0)
    for layer in cross_linears(model):
        readers = readers + layer.weight.norm(dim=0)
    position = x0.std(dim=0) * readers
    dims = model.embedding.embedding_dim
    per_dimension = position.reshape(width // dims, dims).sum(dim=0)

    neurons = []
    hidden = x0
    for i, linear in enumerate(linears):
        hidden = torch.relu(linear(hidden))
        outgoing = linears[i + 1].weight.norm(dim=0) if i + 1 < len(linears) else head[width:].abs()
        neurons.append(hidden.abs().mean(dim=0) * outgoing)
    return per_dimension, neurons


def _top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    return torch.sort(torch.topk(scores, keep).indices).values


@torch.no_grad()
def shrink(
    model: DCNv2, step: PruningStep, categorical: torch.Tensor, dense: torch.Tensor
) -> DCNv2:
    """A new, physically smaller DCNv2 holding the most important dimensions and neurons."""
    dim_scores, neuron_scores = importances(model, categorical, dense)
    keep_dims = _top(dim_scores, step.embedding_dim)
    keep_neurons = [_top(s, k) for s, k in zip(neuron_scores, step.mlp_units, strict=True)]
    dims = model.embedding.embedding_dim
    groups = mlp_linears(model)[0].in_features // dims  # fields + the dense projection
    positions = torch.cat([g * dims + keep_dims for g in range(groups)])

    sizes = [
        *model.offsets.diff().tolist(),
        model.embedding.num_embeddings - int(model.offsets[-1]),
    ]
    pruned = DCNv2(
        sizes,
        model.dense_projection.in_features,
        step.embedding_dim,
        len(model.cross),
        step.mlp_units,
        _dropout(model),
    )
    pruned.embedding.weight.copy_(model.embedding.weight[:, keep_dims])
    pruned.dense_projection.weight.copy_(model.dense_projection.weight[keep_dims])
    for new, old in zip(cross_linears(pruned), cross_linears(model), strict=True):
        new.weight.copy_(old.weight[positions][:, positions])
        new.bias.copy_(old.bias[positions])
    inputs = positions
    for new, old, keep in zip(mlp_linears(pruned), mlp_linears(model), keep_neurons, strict=True):
        new.weight.copy_(old.weight[keep][:, inputs])
        new.bias.copy_(old.bias[keep])
        inputs = keep
    width = model.head.in_features - len(mlp_linears(model)[-1].bias)
    pruned.head.weight.copy_(model.head.weight[:, torch.cat([positions, width + inputs])])
    pruned.head.bias.copy_(model.head.bias)
    return pruned


def _dropout(model: DCNv2) -> float:
    return next((m.p for m in model.mlp if isinstance(m, nn.Dropout)), 0.0)

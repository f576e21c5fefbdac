"""Ranking model architectures (PyTorch; training only).

Every model takes the same two inputs, `categorical` (int64 [batch, fields], per-field vocabulary
indices with 0 as OOV) and `dense` (float32 [batch, dense_fields]), and returns the click
probability as float32 [batch]. Per-field offsets into one shared embedding table are baked into
the graph, so the exported model has a single Gather.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

EMBEDDING_INIT_STD = 0.01


class RankingModel(nn.Module):
    """Base: subclasses implement `logits_and_embeddings`; forward returns probabilities."""

    offsets: torch.Tensor

    def __init__(self, vocabulary_sizes: Sequence[int], embedding_dim: int) -> None:
        super().__init__()
        offsets = torch.tensor([0, *vocabulary_sizes[:-1]], dtype=torch.int64).cumsum(0)
        self.register_buffer("offsets", offsets)
        self.embedding = nn.Embedding(sum(vocabulary_sizes), embedding_dim)
        # Small initial embeddings (torch's default is N(0, 1)): with products of embeddings in
        # the cross layers, large ones start the model in a regime that memorises ids at once.
        nn.init.normal_(self.embedding.weight, std=EMBEDDING_INIT_STD)

    def embed(self, categorical: torch.Tensor) -> torch.Tensor:
        embeddings: torch.Tensor = self.embedding(categorical + self.offsets)
        return embeddings

    def logits_and_embeddings(
        self, categorical: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, categorical: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits_and_embeddings(categorical, dense)[0])


class DCNv2(RankingModel):
    """DCN-v2 (Wang et al., 2021), parallel form: full-rank cross layers x_{l+1} = x0 * (W x_l + b)
    + x_l beside a deep ReLU MLP, both over the concatenated field embeddings; a linear head reads
    both. The genre bag enters as one more "field": a bias-free projection to the embedding size.
    """

    def __init__(
        self,
        vocabulary_sizes: Sequence[int],
        dense_dim: int,
        embedding_dim: int = 32,
        cross_layers: int = 3,
        mlp_units: Sequence[int] = (1024, 512, 256),
        dropout: float = 0.2,
    ) -> None:
        super().__init__(vocabulary_sizes, embedding_dim)
        self.dense_projection = nn.Linear(dense_dim, embedding_dim, bias=False)
        width = (len(vocabulary_sizes) + 1) * embedding_dim
        self.cross = nn.ModuleList(nn.Linear(width, width) for _ in range(cross_layers))
        layers: list[nn.Module] = []
        previous = width
        for units in mlp_units:
            layers += [nn.Linear(previous, units), nn.ReLU(), nn.Dropout(dropout)]
            previous = units
        self.mlp = nn.Sequential(*layers)
        self.head = nn.Linear(width + previous, 1)

    def logits_and_embeddings(
        self, categorical: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = self.embed(categorical)
        x0 = torch.cat([embeddings.flatten(1), self.dense_projection(dense)], dim=1)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        logits = self.head(torch.cat([x, self.mlp(x0)], dim=1)).squeeze(1)
        return logits, embeddings


class LogisticRegression(RankingModel):
    """The reference point: one weight per feature value plus a linear term on the dense fields."""

    def __init__(self, vocabulary_sizes: Sequence[int], dense_dim: int) -> None:
        super().__init__(vocabulary_sizes, 1)
        self.dense_linear = nn.Linear(dense_dim, 1)

    def logits_and_embeddings(
        self, categorical: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = self.embed(categorical)
        logits = embeddings.sum(dim=(1, 2)) + self.dense_linear(dense).squeeze(1)
        return logits, embeddings


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

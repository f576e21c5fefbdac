"""The README's "bring your own model" example: a DCN-v2-style ranker of a user's own, written
with plain PyTorch and exported with `torch.onnx.export` (none of this project's pipeline), so
the example's model can be made again:

    .venv/bin/python docs/my_ranker.py model_repository/my-ranker/1/model.onnx

(needs torch: `scripts/setup train`). Inputs `cat` INT64 [batch, 8] and `dense` FP32 [batch, 4],
output `score` FP32 [batch]; 1.4 million parameters, most of them in the embedding table.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn


class Ranker(nn.Module):
    def __init__(self, vocabulary: int = 10000, fields: int = 8, width: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary * fields, width)
        self.register_buffer("offsets", torch.arange(fields) * vocabulary)
        features = fields * width + 4
        self.cross = nn.ModuleList(nn.Linear(features, features) for _ in range(2))
        self.deep = nn.Sequential(
            nn.Linear(features, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU()
        )
        self.head = nn.Linear(features + 128, 1)

    def forward(self, cat: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        x0 = torch.cat([self.embed(cat + self.offsets).flatten(1), dense], dim=1)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        return torch.sigmoid(self.head(torch.cat([x, self.deep(x0)], dim=1))).squeeze(1)


def main(path: Path) -> None:
    torch.manual_seed(0)
    model = Ranker().eval()
    batch = torch.export.Dim("batch")
    path.parent.mkdir(parents=True, exist_ok=True)
    example = (torch.randint(0, 10000, (4, 8)), torch.rand(4, 4))
    torch.onnx.export(
        model, example, str(path), input_names=["cat", "dense"], output_names=["score"],
        dynamic_shapes={"cat": {0: batch}, "dense": {0: batch}}, external_data=False,
    )  # fmt: skip
    print(f"wrote {path}: {sum(p.numel() for p in model.parameters()):,} parameters")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "model_repository/my-ranker/1/model.onnx"))

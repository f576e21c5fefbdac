"""`python -m bench.criteo_accelerate`: `python -m models accelerate` on a Criteo-shaped model.

A DCN-v2 (26 categorical fields with Criteo's spread of cardinalities, 13 dense fields; the
embedding tables hold almost all of its parameters) trained briefly on the synthetic Criteo-shaped
data (`models/synthetic.py`, labels from a planted model), exported to ONNX with the project's
exporter, then accelerated as a user's plain model would be: gated on labelled held-out rows,
INT8 calibrated on training rows. Split: rows shuffled with `--seed`, 80% train, 10% validation
(early stopping), 10% held out for the gate. Prints the version's report.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from config.settings import load_settings
from models import synthetic
from models.accelerate import accelerate
from models.architectures import DCNv2
from models.export import export_onnx
from models.metrics import roc_auc
from models.train import Examples, evaluate, fit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.criteo_accelerate", description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="keep the version folder here (default: temp)")
    args = parser.parse_args(argv)
    settings = load_settings()
    data = synthetic.generate(args.rows, args.seed)
    order = np.random.default_rng(args.seed).permutation(args.rows)
    train, validation, held_out = np.split(order, [int(0.8 * args.rows), int(0.9 * args.rows)])

    def rows(index: np.ndarray) -> Examples:
        return Examples(data.categorical[index], data.dense[index], data.labels[index])

    model = DCNv2(data.vocabulary_sizes, synthetic.DENSE_FIELDS, embedding_dim=16,
                  cross_layers=2, mlp_units=(256, 128), dropout=0.1)  # fmt: skip
    parameters = sum(p.numel() for p in model.parameters())
    tables = model.embedding.weight.numel()
    print(f"DCN-v2: {parameters:,} parameters, {tables / parameters:.1%} in embedding tables")
    fit(model, rows(train), rows(validation), settings.training, args.seed,
        max_epochs=args.epochs, label="Criteo-shaped DCN-v2")  # fmt: skip
    auc, _ = evaluate(model, rows(held_out))
    planted = roc_auc(data.labels[held_out], data.planted_logits[held_out])
    print(f"held-out AUC {auc:.4f} (the planted model's, the ceiling: {planted:.4f})")
    with tempfile.TemporaryDirectory() as scratch:
        root = args.out or Path(scratch)
        version = root / "criteo-dcnv2" / "1"
        version.mkdir(parents=True, exist_ok=True)
        export_onnx(model, version / "model.onnx", synthetic.CATEGORICAL_FIELDS,
                    synthetic.DENSE_FIELDS)  # fmt: skip
        eval_file, calibration_file = root / "held_out.npz", root / "calibration.npz"
        np.savez(eval_file, categorical=data.categorical[held_out], dense=data.dense[held_out],
                 labels=data.labels[held_out].astype(np.int64))  # fmt: skip
        sample = train[:2000]
        np.savez(calibration_file, categorical=data.categorical[sample], dense=data.dense[sample])
        accelerate(version, eval_file, calibration_file, settings)
        print((version / "report.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

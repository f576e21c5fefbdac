"""The build report: a JSON document written beside the manifest, rendered to markdown."""

from __future__ import annotations

from typing import Any


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def _within(parity: dict[str, Any], tolerance: float) -> str:
    if parity["requested"] != "f32":
        return f"not required ({parity['executed']})"
    return "yes" if parity["max_abs_difference"] <= tolerance else "no"


def render_markdown(report: dict[str, Any]) -> str:
    protocol = report["protocol"]
    heavy = report["baseline"]
    lines = [
        f"# {report['model_name']} version {report['model_version']}",
        "",
        f"Built {report['created_at']} in {report['build_seconds']:.0f} s.",
        "",
        "## Protocol",
        "",
        f"- Data: {protocol['dataset']} ({protocol['interactions']:,} ratings, "
        f"{protocol['users']} users, {protocol['items']} items), from `{protocol['source']}`.",
        f"- Label: {protocol['label']}; positive rate {protocol['positive_rate']:.3f}.",
        f"- Split: {protocol['split']} (seed {protocol['split_seed']}): "
        + ", ".join(f"{k} {v:,}" for k, v in protocol["split_rows"].items())
        + ".",
        f"- Metric: {protocol['metric']}",
        "",
        "## Heavy baseline: DCN-v2",
        "",
        f"Architecture: {heavy['architecture']}. Training: {heavy['training']}.",
        "",
    ]
    lines += _table(
        ["seed", "best epoch", "epochs run", "validation AUC", "test AUC", "test log loss", "s"],
        [
            [
                s["seed"],
                s["best_epoch"],
                s["epochs_run"],
                f"{s['validation_auc']:.4f}",
                f"{s['test_auc']:.4f}",
                f"{s['test_log_loss']:.4f}",
                f"{s['seconds']:.0f}",
            ]
            for s in heavy["seeds"]
        ],
    )
    summary = heavy["summary"]
    lines += [
        "",
        f"Test AUC over {len(heavy['seeds'])} seeds: mean **{summary['test_auc_mean']:.4f}**, "
        f"standard deviation {summary['test_auc_std']:.4f}, range "
        f"{summary['test_auc_min']:.4f} to {summary['test_auc_max']:.4f}. "
        f"Test log loss mean {summary['test_log_loss_mean']:.4f}. "
        f"Published: the seed {heavy['published_seed']} model.",
        "",
        "References on the same split:",
        "",
    ]
    lines += _table(
        ["model", "test AUC", "test log loss"],
        [
            [r["name"], f"{r['test_auc']:.4f}", f"{r['test_log_loss']:.4f}"]
            for r in report["references"]
        ],
    )
    lines += ["", "## Variants", ""]
    lines += _table(
        ["variant", "format", "precision", "parameters", "FLOPs/row", "file KiB", "test AUC",
         "test log loss", "servable"],
        [
            [v["name"], v["format"], v["precision"], f"{v['parameters']:,}",
             f"{v['flops_per_row']:,}", f"{v['file_bytes'] / 1024:.0f}", f"{v['test_auc']:.4f}",
             f"{v['test_log_loss']:.4f}", "yes" if v["servable"] else "no"]
            for v in report["variants"]
        ],
    )  # fmt: skip
    lines += [
        "",
        "FLOPs per row count the matrix products (2 per multiply-add); gathers and element-wise "
        "work are not counted.",
        "",
        "## Export parity",
        "",
        f"Probabilities of the exported ONNX model against PyTorch on {report['parity_rows']:,} "
        f"test rows; tolerance {report['parity_tolerance']:g}.",
        "",
    ]
    lines += _table(
        ["runtime", "requested precision", "executed precision", "max abs difference", "within"],
        [
            [p["runtime"], p["requested"], p["executed"], f"{p['max_abs_difference']:.2e}",
             _within(p, report["parity_tolerance"])]
            for p in report["parity"]
        ],
    )  # fmt: skip
    lines += [
        "",
        "OpenVINO's CPU plugin picks its execution precision from the CPU: BF16 where the CPU "
        "has AMX or AVX-512 BF16, whatever the model file holds. The row `default` shows what "
        "it picked on the build machine; the repository's FP32 figures ask for "
        "`INFERENCE_PRECISION_HINT=f32` explicitly.",
        "",
    ]
    return "\n".join(lines)

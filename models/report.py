"""The build report: a JSON document written beside the manifest, rendered to markdown."""

from __future__ import annotations

from collections import defaultdict
from typing import Any


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def _seeds(records: list[dict[str, Any]]) -> list[str]:
    return _table(
        ["seed", "best epoch", "epochs run", "validation AUC", "test AUC", "test log loss", "s"],
        [
            [r["seed"], r["best_epoch"], r["epochs_run"], f"{r['validation_auc']:.4f}",
             f"{r['test_auc']:.4f}", f"{r['test_log_loss']:.4f}", f"{r['seconds']:.0f}"]
            for r in records
        ],
    )  # fmt: skip


def _summary(s: dict[str, float], seeds: int) -> str:
    return (
        f"test AUC over {seeds} seed(s): mean **{s['test_auc_mean']:.4f}**, standard deviation "
        f"{s['test_auc_std']:.4f}, range {s['test_auc_min']:.4f} to {s['test_auc_max']:.4f}; "
        f"test log loss mean {s['test_log_loss_mean']:.4f}"
    )


def _protocol(report: dict[str, Any]) -> list[str]:
    p = report["protocol"]
    return [
        "## Protocol",
        "",
        f"- Data: {p['dataset']} ({p['interactions']:,} ratings, {p['users']} users, "
        f"{p['items']} items), from `{p['source']}`.",
        f"- Label: {p['label']}; positive rate {p['positive_rate']:.3f}.",
        f"- Split: {p['split']} (seed {p['split_seed']}): "
        + ", ".join(f"{k} {v:,}" for k, v in p["split_rows"].items())
        + ".",
        f"- Metric: {p['metric']}",
        "- Gate: numerics-only variants against the float model they come from (AUC drop, log "
        "loss ratio, Spearman rank correlation, distinct scores); the student and pruned models "
        "against the baseline's mean test AUC over the same seeds. The bootstrap column is the "
        "paired 95% interval of test AUC(variant) - AUC(baseline-fp32) over resampled test rows.",
        "",
    ]


def _baseline(report: dict[str, Any]) -> list[str]:
    heavy = report["baseline"]
    lines = [
        "## Heavy baseline: DCN-v2",
        "",
        f"Architecture: {heavy['architecture']}. Training: {heavy['training']}.",
        "",
        *_seeds(heavy["seeds"]),
        "",
        f"Baseline {_summary(heavy['summary'], len(heavy['seeds']))}. "
        f"Published: the seed {heavy['published_seed']} model.",
        "",
        "References on the same split:",
        "",
    ]
    return lines + _table(
        ["model", "test AUC", "test log loss"],
        [[r["name"], f"{r['test_auc']:.4f}", f"{r['test_log_loss']:.4f}"]
         for r in report["references"]],
    )  # fmt: skip


def _variants(report: dict[str, Any]) -> list[str]:
    rows = []
    for v in report["variants"]:
        interval = v["bootstrap_auc_difference"]
        ci = "" if interval is None else f"{interval['low']:+.4f} to {interval['high']:+.4f}"
        rows.append(
            [v["name"], v["derived_from"] or "", v["format"], v["precision"], v["device"],
             f"{v['parameters']:,}", f"{v['flops_per_row']:,}", f"{v['file_bytes'] / 1024:.0f}",
             f"{v['test_auc']:.4f} ({v['auc_delta']:+.4f})",
             f"{v['test_log_loss']:.4f} ({v['log_loss_delta']:+.4f})", ci, v["scored_with"],
             "yes" if v["servable"] else "**no**"]
        )  # fmt: skip
    lines = ["## Variants", ""]
    lines += _table(
        ["variant", "from", "format", "precision", "device", "parameters", "FLOPs/row", "KiB",
         "test AUC (delta)", "test log loss (delta)", "bootstrap AUC diff", "scored with",
         "servable"],
        rows,
    )  # fmt: skip
    lines += [
        "",
        "FLOPs per row count the matrix products (2 per multiply-add); gathers and element-wise "
        "work are not counted. Deltas are against baseline-fp32.",
        "",
        "Defaults: " + ", ".join(f"{k}: `{v}`" for k, v in report["default_variants"].items()),
        "",
        "Gate verdicts:",
        "",
    ]
    lines += [f"- `{v['name']}`: {v['gate']}" for v in report["variants"]]
    return [*lines, ""]


def _student_and_pruning(report: dict[str, Any]) -> list[str]:
    student, pruning = report["student"], report["pruning"]
    distilled, plain = student["distilled_summary"], student["labels_only_summary"]
    gain = distilled["test_auc_mean"] - plain["test_auc_mean"]
    lines = [
        "## Light model: distilled student",
        "",
        f"Architecture: {student['architecture']}. Distillation: {student['distillation']}.",
        "",
        *_seeds(student["distilled"]),
        "",
        f"Distilled {_summary(distilled, len(student['distilled']))}.",
        f"The same student on labels alone: {_summary(plain, len(student['labels_only']))}. "
        f"Distillation {'helps' if gain > 0 else 'does not help'}: {gain:+.4f} mean test AUC.",
        "",
        "## Structured pruning",
        "",
        f"Criterion: {pruning['criterion']}. Each step shrinks the model, then fine-tunes it with "
        "distillation.",
        "",
    ]
    rows = [
        [p["seed"], i + 1, s["embedding_dim"], s["mlp_units"], f"{s['parameters']:,}",
         f"{s['validation_auc_before_fine_tune']:.4f}",
         f"{s['validation_auc_after_fine_tune']:.4f}",
         s["fine_tune_epochs"]]
        for p in pruning["seeds"]
        for i, s in enumerate(p["steps"])
    ]  # fmt: skip
    lines += _table(
        ["seed", "step", "embedding dims kept", "MLP units kept", "parameters",
         "validation AUC before fine-tune", "after", "fine-tune epochs"],
        rows,
    )  # fmt: skip
    lines += ["", f"Pruned {_summary(pruning['summary'], len(pruning['seeds']))}.", ""]
    return lines


def _latency(report: dict[str, Any]) -> list[str]:
    cells: dict[tuple[str, str, str], dict[int, dict[str, Any]]] = defaultdict(dict)
    for t in report["latency"]:
        cells[(t["variant"], t["runtime"], t["execution_precision"])][t["batch_rows"]] = t
    sizes = sorted({t["batch_rows"] for t in report["latency"]})
    rows = [
        [v, r, p]
        + [
            f"{cell[n]['median_seconds'] * 1000:.3f} ms / {cell[n]['rows_per_second']:,.0f}"
            for n in sizes
        ]
        for (v, r, p), cell in cells.items()
    ]
    lines = [
        "## Single-thread latency",
        "",
        "Median of repeated runs after warm-up, one thread, all cells measured in one run (batch "
        "size by batch size, cycling through the runners). Each cell: latency / rows per second.",
        "",
    ]
    lines += _table(["variant", "runtime", "precision", *[f"batch {n}" for n in sizes]], rows)
    return [*lines, "", "![latency against batch size](latency.png)", ""]


def _targets(report: dict[str, Any]) -> list[str]:
    t = report["targets"]
    lines = [
        "## Targets",
        "",
        f"- Best servable CPU variant: `{t['best_cpu_variant']}` on {t['best_cpu_runtime']}, "
        f"{t['best_cpu_seconds'] * 1000:.3f} ms at batch {t['batch_rows']}.",
        f"- Its latency vs baseline-fp32 under PyTorch: {t['latency_vs_baseline_pytorch']:.1%} "
        "(target at most 15%).",
        f"- Its latency vs baseline-fp32 under {t['best_cpu_runtime']}: "
        f"{t['latency_vs_baseline_same_runtime']:.1%} (target at most 30%).",
        f"- Its parameters vs baseline-fp32: {t['parameters_vs_baseline']:.1%} "
        "(target at most 15%).",
    ]
    lines += [
        f"- End to end (student + pruning + INT8), `{e['variant']}`: test AUC {e['test_auc']:.4f}, "
        f"{e['auc_delta']:+.4f} vs baseline-fp32 (target at least -0.002)."
        for e in t["end_to_end"]
    ]
    return [*lines, ""]


def _parity(report: dict[str, Any]) -> list[str]:
    tolerance = report["parity_tolerance"]
    lines = [
        "## Export parity",
        "",
        f"Probabilities of each exported float model against PyTorch on {report['parity_rows']:,} "
        f"test rows; tolerance {tolerance:g} where FP32 is requested.",
        "",
    ]
    lines += _table(
        ["variant", "runtime", "requested", "executed", "max abs difference", "within"],
        [
            [p["variant"], p["runtime"], p["requested"], p["executed"],
             f"{p['max_abs_difference']:.2e}",
             ("yes" if p["max_abs_difference"] <= tolerance else "no")
             if p["requested"] == "f32" else f"not required ({p['executed']})"]
            for p in report["parity"]
        ],
    )  # fmt: skip
    return [
        *lines,
        "",
        "OpenVINO's CPU plugin picks its execution precision from the CPU: BF16 where the CPU has "
        "AMX or AVX-512 BF16, whatever the model file holds. Rows marked `default` show what it "
        "picked on the build machine; FP32 figures ask for `INFERENCE_PRECISION_HINT=f32`.",
        "",
    ]


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# {report['model_name']} version {report['model_version']}",
        "",
        f"Built {report['created_at']} in {report['build_seconds']:.0f} s.",
        "",
    ]
    for part in (
        _protocol,
        _variants,
        _targets,
        _baseline,
        _student_and_pruning,
        _latency,
        _parity,
    ):
        lines += part(report)
        lines.append("")
    return "\n".join(lines)

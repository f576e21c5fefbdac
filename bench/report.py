"""The benchmark report: a markdown table of the headline ratios and a latency-vs-load chart."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

TARGETS = {"light_p99_ratio": 0.20, "throughput_ratio": 5.0}


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def headline(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per mix: light-load p99 and throughput at the p99 target, with optimized/baseline ratios."""
    servers = report["servers"]
    rows = []
    for mix in next(iter(servers.values()))["mixes"]:
        row: dict[str, Any] = {"mix": mix}
        for name, server in servers.items():
            result = server["mixes"][mix]
            row[f"{name}_light_p50_ms"] = result["light"]["latency_ms"]["p50"]
            row[f"{name}_light_p99_ms"] = result["light"]["latency_ms"]["p99"]
            row[f"{name}_throughput"] = result["throughput_at_target"]
        if "baseline" in servers and "optimized" in servers:
            row["light_p99_ratio"] = ratio(row["optimized_light_p99_ms"],
                                           row["baseline_light_p99_ms"])  # fmt: skip
            row["throughput_ratio"] = ratio(row["optimized_throughput"], row["baseline_throughput"])
        if "frontend" in servers and "optimized" in servers:
            row["of_frontend"] = ratio(row["optimized_throughput"], row["frontend_throughput"])
        rows.append(row)
    return rows


def markdown(report: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    p = report["protocol"]
    servers = report["servers"]
    lines = [
        "| request | baseline p99 light (ms) | optimized p99 light (ms) | ratio (target <= 0.20) "
        f"| baseline req/s at p99 <= {p['p99_target_ms']:g} ms | optimized req/s "
        "| ratio (target >= 5) | front end alone req/s | optimized / front end |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mix']} | {r.get('baseline_light_p99_ms', math.nan):.2f} "
            f"| {r.get('optimized_light_p99_ms', math.nan):.2f} "
            f"| {r.get('light_p99_ratio', math.nan):.3f} "
            f"| {r.get('baseline_throughput', math.nan):.0f} "
            f"| {r.get('optimized_throughput', math.nan):.0f} "
            f"| {r.get('throughput_ratio', math.nan):.1f}x "
            f"| {r.get('frontend_throughput', math.nan):.0f} "
            f"| {r.get('of_frontend', math.nan):.0%} |"
        )
    lines += ["", "| server | variant | test AUC | test log loss |", "|---|---|---:|---:|"]
    for name, a in report["accuracy"].items():
        lines.append(
            f"| {name} | {a['variant']} | {a['test_auc']:.4f} | {a['test_log_loss']:.4f} |"
        )
    light = ", ".join(f"{m['light_rate']:g}" for m in p["mixes"])
    lines += [
        "",
        f"Protocol: {p['machine']}; open-loop constant-rate load (requests written on schedule, "
        f"never waiting for answers), latency from the write to the last byte of the answer; "
        f"light load = {light}"
        f" requests/s for {p['light_seconds']:g} s; step load x{p['factor']:g} per "
        f"{p['step_seconds']:g} s step, then {p.get('refine', 0)} bisection steps (a miss counts "
        f"when it repeats), until p99 > "
        f"{p['p99_target_ms']:g} ms or errors and refusals >= {p['max_error_rate']:.1%}; "
        f"throughput = the best goodput of a step that met both. Servers: {', '.join(servers)}; "
        f"run took {report['seconds'] / 60:.1f} min.",
    ]
    return "\n".join(lines) + "\n"


def chart(report: dict[str, Any], path: Path) -> None:
    servers = report["servers"]
    mixes = list(next(iter(servers.values()))["mixes"])
    figure, axes = plt.subplots(1, len(mixes), figsize=(5 * len(mixes), 4), squeeze=False)
    colours = {"baseline": "tab:red", "optimized": "tab:blue", "frontend": "tab:gray"}
    for axis, mix in zip(axes[0], mixes, strict=True):
        for name, server in servers.items():
            steps = server["mixes"][mix]["steps"]
            rates = [s["offered_per_second"] for s in steps]
            for q, style in (("p50", ":"), ("p99", "-")):
                axis.plot(rates, [s["latency_ms"][q] for s in steps], style, marker=".",
                          color=colours.get(name), label=f"{name} {q}")  # fmt: skip
        axis.axhline(report["protocol"]["p99_target_ms"], color="black", lw=0.5)
        axis.set(title=mix, xscale="log", yscale="log", xlabel="offered requests/s",
                 ylabel="latency (ms)")  # fmt: skip
        axis.grid(True, which="both", lw=0.2)
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(report: dict[str, Any], out: Path) -> str:
    rows = headline(report)
    text = markdown(report, rows)
    (out / "report.md").write_text(text)
    chart(report, out / "latency.png")
    return text

"""PNG chart of latency against batch size, one line per (variant, runtime)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from models.benchmark import Timing


def latency_chart(timings: list[Timing], path: Path, title: str) -> None:
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for t in timings:
        series[f"{t.variant} / {t.runtime} ({t.execution_precision})"].append(
            (t.batch_rows, t.median_seconds * 1000)
        )
    figure, axes = plt.subplots(figsize=(9, 6))
    for label, points in sorted(series.items()):
        rows, ms = zip(*sorted(points), strict=True)
        axes.plot(rows, ms, marker="o", label=label)
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xlabel("batch rows")
    axes.set_ylabel("median latency, ms (single thread)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)

"""PNG chart of latency against batch size: a colour per variant, a line style per runtime."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from models.benchmark import Timing

RUNTIME_STYLES = {"pytorch": ":", "onnxruntime": "-", "openvino": "--"}


def latency_chart(timings: list[Timing], path: Path, title: str) -> None:
    series: dict[tuple[str, str, str], list[tuple[int, float]]] = defaultdict(list)
    for t in timings:
        key = (t.variant, t.runtime, t.execution_precision)
        series[key].append((t.batch_rows, t.median_seconds * 1000))
    variants = list(dict.fromkeys(t.variant for t in timings))
    colours = plt.get_cmap("tab10")
    figure, axes = plt.subplots(figsize=(10, 6.5))
    for (variant, runtime, precision), points in series.items():
        rows, ms = zip(*sorted(points), strict=True)
        axes.plot(
            rows,
            ms,
            marker="o",
            markersize=4,
            color=colours(variants.index(variant) % 10),
            linestyle=RUNTIME_STYLES.get(runtime, "-."),
            label=f"{variant} / {runtime} ({precision})",
        )
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xlabel("batch rows")
    axes.set_ylabel("median latency, ms (single thread)")
    axes.set_title(f"{title}: dotted PyTorch, solid ONNX Runtime, dashed OpenVINO")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)

"""Single-thread latency of each (variant, runtime) at several batch sizes, side by side.

Every cell is the median of repeated runs after warm-up. Cells are measured batch size by batch
size, cycling through all runners, so drift on a shared machine hits every variant alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from models.settings import BenchmarkSettings

Inputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class Runner:
    variant: str
    runtime: str
    execution_precision: str
    run: Callable[[Inputs], object]


@dataclass(frozen=True)
class Timing:
    variant: str
    runtime: str
    execution_precision: str
    batch_rows: int
    median_seconds: float
    runs: int

    @property
    def rows_per_second(self) -> float:
        return self.batch_rows / self.median_seconds


def time_cell(
    run: Callable[[Inputs], object], inputs: Inputs, settings: BenchmarkSettings
) -> list[float]:
    for _ in range(settings.warmup_runs):
        run(inputs)
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < settings.max_runs and (
        len(samples) < settings.min_runs
        or time.perf_counter() - started < settings.seconds_per_cell
    ):
        begin = time.perf_counter()
        run(inputs)
        samples.append(time.perf_counter() - begin)
    return samples


def benchmark(runners: list[Runner], inputs: Inputs, settings: BenchmarkSettings) -> list[Timing]:
    """`inputs` must hold at least max(batch_rows) rows."""
    timings = []
    for rows in settings.batch_rows:
        batch = {name: np.ascontiguousarray(array[:rows]) for name, array in inputs.items()}
        for runner in runners:
            samples = time_cell(runner.run, batch, settings)
            timings.append(
                Timing(
                    runner.variant,
                    runner.runtime,
                    runner.execution_precision,
                    rows,
                    statistics.median(samples),
                    len(samples),
                )
            )
    return timings

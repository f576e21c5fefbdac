"""Stepping an offered rate up to the highest one a server sustains within a target."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.stats import Summary


def within_target(s: Summary, step_seconds: float, p99_ms: float) -> bool:
    """A step met the target: p99 within `p99_ms`, under 1% of what was offered refused, failed,
    timed out or unsent."""
    bad = s.refused + s.errors + s.deadline_exceeded + s.client_timeouts + s.unsent
    return bool(bad < 0.01 * s.offered_per_second * step_seconds and s.latency_ms["p99"] <= p99_ms)


@dataclass(frozen=True)
class Stepping:
    first_rate: float
    factor: float = 1.5  # growth per step until the first miss
    refine: int = 2  # bisection steps after it
    max_steps: int = 20


def step_up(measure: Callable[[float], Summary], meets: Callable[[Summary], bool],
            stepping: Stepping, show: Callable[[float, Summary, bool], None],
            ) -> tuple[float, list[dict[str, Any]]]:  # fmt: skip
    """Grow the rate by `factor` until a step misses the target (twice in a row), then bisect
    (geometrically) between the last pass and the first miss `refine` times; if the first rate
    already misses, step down until one passes. Returns the best goodput of a step that met the
    target, and every step in rate order."""
    steps: list[dict[str, Any]] = []
    passed, failed, best, bisected = 0.0, 0.0, 0.0, 0
    rate = stepping.first_rate
    for _ in range(stepping.max_steps):
        summary = measure(rate)
        ok = meets(summary)
        show(rate, summary, ok)
        if not ok:  # one pause on a shared machine is not a limit: a miss must repeat
            summary = measure(rate)
            ok = meets(summary)
            show(rate, summary, ok)
        steps.append({"rate": rate, "meets_target": ok, **dataclasses.asdict(summary)})
        if ok:
            passed, best = rate, max(best, summary.ok_per_second)
        else:
            failed = rate
        if not passed:
            if rate < 0.5:
                break
            rate /= stepping.factor
            continue
        if failed and bisected == stepping.refine:
            break
        bisected += bool(failed)
        rate = (passed * failed) ** 0.5 if failed else rate * stepping.factor
    steps.sort(key=lambda step: float(step["rate"]))
    return best, steps

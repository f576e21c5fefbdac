"""A per-device latency model: seconds ~ a + b * rows, least squares over recent batches.

Seeded by warm-up timings, then updated with every measured batch; a bounded window keeps it
current. Running sums make both observe() and predict() O(1).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class LatencyFit:
    fixed_seconds: float  # a
    seconds_per_row: float  # b

    def predict(self, rows: int) -> float:
        return self.fixed_seconds + self.seconds_per_row * rows


class LatencyModel:
    def __init__(self, window: int = 256) -> None:
        self._samples: deque[tuple[int, float]] = deque()
        self._window = window
        self._n = 0
        self._sx = self._sy = self._sxx = self._sxy = 0.0
        self._fit = LatencyFit(0.0, 0.0)

    def observe(self, rows: int, seconds: float) -> None:
        self._samples.append((rows, seconds))
        self._add(rows, seconds, 1)
        if len(self._samples) > self._window:
            old_rows, old_seconds = self._samples.popleft()
            self._add(old_rows, old_seconds, -1)
        self._fit = self._solve()

    def _add(self, rows: int, seconds: float, sign: int) -> None:
        self._n += sign
        self._sx += sign * rows
        self._sy += sign * seconds
        self._sxx += sign * rows * rows
        self._sxy += sign * rows * seconds

    def _solve(self) -> LatencyFit:
        if self._n == 0:
            return LatencyFit(0.0, 0.0)
        variance = self._n * self._sxx - self._sx * self._sx
        if variance <= 1e-9 * max(1.0, self._sxx):  # one batch size only: all cost per row
            return LatencyFit(0.0, self._sy / max(self._sx, 1.0))
        b = (self._n * self._sxy - self._sx * self._sy) / variance
        a = (self._sy - b * self._sx) / self._n
        # A negative intercept or slope is noise; clamp so predictions stay monotone and positive.
        if b < 0:
            return LatencyFit(max(self._sy / self._n, 0.0), 0.0)
        if a < 0:
            return LatencyFit(0.0, self._sxy / self._sxx)
        return LatencyFit(a, b)

    @property
    def fit(self) -> LatencyFit:
        return self._fit

    @property
    def samples(self) -> int:
        return self._n

    def predict(self, rows: int) -> float:
        return self._fit.predict(rows)

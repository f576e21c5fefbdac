"""A per-device latency model: seconds ~ a + b * rows, least squares over recent batches.

Seeded by warm-up timings, then updated with every measured batch; a bounded window keeps it
current. Running sums (and a monotonic deque for the fastest batch) make both observe() and
predict() O(1).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class LatencyFit:
    fixed_seconds: float  # a
    seconds_per_row: float  # b
    # No batch finishes faster than the fastest one in the window: a clamped intercept of 0 must
    # not predict that a 1-row batch takes a fraction of a microsecond.
    floor_seconds: float = 0.0

    def predict(self, rows: int) -> float:
        return max(self.fixed_seconds + self.seconds_per_row * rows, self.floor_seconds)


class LatencyModel:
    def __init__(self, window: int = 256) -> None:
        self._samples: deque[tuple[int, float]] = deque()
        self._fastest: deque[tuple[int, float]] = deque()  # (sample number, seconds), ascending
        self._observed = 0
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
        self._observed += 1
        while self._fastest and self._fastest[-1][1] >= seconds:
            self._fastest.pop()
        self._fastest.append((self._observed, seconds))
        if self._fastest[0][0] <= self._observed - self._window:
            self._fastest.popleft()
        fit = self._solve()
        self._fit = LatencyFit(fit.fixed_seconds, fit.seconds_per_row, self._fastest[0][1])

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

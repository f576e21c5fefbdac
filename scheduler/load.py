"""The load model: capacity and predicted completion from device snapshots (pure), and the figures
a load balancer or autoscaler acts on: recent throughput, predicted wait, the queue-time/compute-
time ratio, a 0-100 headroom, and saturation with hysteresis. A tripped device counts for
nothing."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from scheduler.router import Predictable


def rows_per_second(device: Predictable, batch_rows: int) -> float:
    """Rows per second one device scores at full batches, all its slots busy."""
    return device.parallel_slots * batch_rows / max(device.fit.predict(batch_rows), 1e-9)


def capacity_rows_per_second(devices: Sequence[Predictable], batch_rows: int) -> float:
    """Rows per second the healthy devices score at full batches, all slots busy."""
    return sum(rows_per_second(d, batch_rows) for d in devices if d.healthy)


def predicted_completion(devices: Sequence[Predictable], rows_ahead: int, rows: int,
                         batch_rows: int) -> float:  # fmt: skip
    """Seconds until `rows` submitted now, behind `rows_ahead` queued rows, would be scored: the
    earliest free slot of a healthy device, its fixed cost, then every row at the healthy
    devices' combined rate. Infinite with no healthy device. One pass: every request's admission
    asks it."""
    rate, start, fixed = 0.0, math.inf, math.inf
    for device in devices:
        if device.healthy:
            rate += rows_per_second(device, batch_rows)
            start = min(start, device.predicted_start())
            fixed = min(fixed, device.fit.predict(0))
    if start == math.inf:
        return math.inf
    return start + fixed + (rows_ahead + rows) / max(rate, 1e-9)


ARRIVALS_DURING_A_RUN = 0.25  # expected, at most, for a request to run at once


def runs_at_once(mean_gap_seconds: float, predicted_seconds: float, window_seconds: float) -> bool:
    """A request that finds nothing queued and the lone device on the loop's thread idle runs at
    once, in its caller's step, when an idle device finishes it within the window and requests
    arrive seldom enough that one in four runs or fewer has another arriving meanwhile (mean gap
    between arrivals at least four runs): then it is almost always alone in its turn. More often,
    it leaves with the turn's other requests on the next turn, in one batch where running it
    alone would make two."""
    return (
        predicted_seconds <= window_seconds
        and predicted_seconds <= ARRIVALS_DURING_A_RUN * mean_gap_seconds
    )


@dataclass(frozen=True)
class LoadReport:
    queued_requests: int
    queued_rows: int
    predicted_wait_seconds: float  # until the rows queued now would all be scored
    in_flight_batches: dict[str, int]
    healthy_devices: list[str]
    recent_rows_per_second: float
    capacity_rows_per_second: float  # all healthy devices at full batches
    queue_to_compute_ratio: float  # recent mean queue wait / mean batch compute time
    headroom: int  # 0 (saturated) .. 100 (idle)
    saturated: bool


def combine(reports: list[LoadReport]) -> LoadReport:
    """The server's load from each served model version's: queues and recent throughput add up;
    the wait, the ratio and the headroom are the worst of them. Capacity adds up too, which
    overstates it where models share a device (each one's is its own alone on the devices)."""
    in_flight: dict[str, int] = {}
    for report in reports:
        for device, batches in report.in_flight_batches.items():
            in_flight[device] = in_flight.get(device, 0) + batches
    return LoadReport(
        queued_requests=sum(r.queued_requests for r in reports),
        queued_rows=sum(r.queued_rows for r in reports),
        predicted_wait_seconds=max((r.predicted_wait_seconds for r in reports), default=0.0),
        in_flight_batches=in_flight,
        healthy_devices=list(dict.fromkeys(d for r in reports for d in r.healthy_devices)),
        recent_rows_per_second=sum(r.recent_rows_per_second for r in reports),
        capacity_rows_per_second=sum(r.capacity_rows_per_second for r in reports),
        queue_to_compute_ratio=max((r.queue_to_compute_ratio for r in reports), default=0.0),
        headroom=min((r.headroom for r in reports), default=0),
        saturated=any(r.saturated for r in reports),
    )


class RecentWork:
    """Batches completed in the last `window_seconds`: rows, queue wait and compute time."""

    def __init__(self, window_seconds: float = 5.0, max_entries: int = 10_000) -> None:
        self._window = window_seconds
        self._entries: deque[tuple[float, int, float, float]] = deque(maxlen=max_entries)

    def record(self, now: float, rows: int, queue_seconds: float, compute_seconds: float) -> None:
        self._entries.append((now, rows, queue_seconds, compute_seconds))

    def _trim(self, now: float) -> None:
        while self._entries and self._entries[0][0] < now - self._window:
            self._entries.popleft()

    def rows_per_second(self, now: float) -> float:
        self._trim(now)
        return sum(e[1] for e in self._entries) / self._window

    def queue_to_compute_ratio(self, now: float) -> float:
        self._trim(now)
        compute = sum(e[3] for e in self._entries)
        return sum(e[2] for e in self._entries) / compute if compute > 0 else 0.0


class Saturation:
    """Saturated while the predicted wait exceeds `threshold`; clear again only below half of it,
    so readiness does not flap around the threshold."""

    def __init__(self, threshold_seconds: float) -> None:
        self.threshold = threshold_seconds
        self.saturated = False

    def update(self, predicted_wait_seconds: float) -> bool:
        if self.saturated and predicted_wait_seconds < self.threshold / 2:
            self.saturated = False
        elif not self.saturated and predicted_wait_seconds > self.threshold:
            self.saturated = True
        return self.saturated


def headroom(utilisation: float, predicted_wait_seconds: float, threshold_seconds: float) -> int:
    """100 when idle, 0 at capacity or at the saturation wait, whichever is nearer."""
    pressure = max(utilisation, predicted_wait_seconds / threshold_seconds)
    return max(0, min(100, round(100 * (1 - pressure))))

"""Routing policies: pure functions from a snapshot of the devices to the index of one of them.

earliest-completion (default): the device whose predicted finish time for this batch is soonest,
counting the work already assigned to it. shortest-queue and round-robin exist for comparison.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from scheduler.latency import LatencyFit

Policy = Literal["earliest-completion", "shortest-queue", "round-robin"]


@dataclass(frozen=True)
class DeviceSnapshot:
    name: str
    fit: LatencyFit
    in_flight_batches: int  # running or waiting for a slot on this device
    parallel_slots: int
    backlog_seconds: float  # predicted seconds of work assigned and not finished
    max_outstanding_batches: int

    @property
    def accepting(self) -> bool:
        return self.in_flight_batches < self.max_outstanding_batches

    def predicted_finish(self, rows: int) -> float:
        """Seconds from now until a batch of `rows` sent here now would be done."""
        wait = 0.0
        if self.in_flight_batches >= self.parallel_slots:
            wait = self.backlog_seconds / self.parallel_slots
        return wait + self.fit.predict(rows)


Router = Callable[[Sequence[DeviceSnapshot], int], int]


def earliest_completion(devices: Sequence[DeviceSnapshot], rows: int) -> int:
    candidates = [i for i, d in enumerate(devices) if d.accepting] or list(range(len(devices)))
    return min(candidates, key=lambda i: devices[i].predicted_finish(rows))


def shortest_queue(devices: Sequence[DeviceSnapshot], rows: int) -> int:
    del rows
    return min(range(len(devices)), key=lambda i: devices[i].in_flight_batches)


def round_robin() -> Router:
    counter = itertools.count()

    def choose(devices: Sequence[DeviceSnapshot], rows: int) -> int:
        del rows
        return next(counter) % len(devices)

    return choose


def make_router(policy: Policy) -> Router:
    if policy == "earliest-completion":
        return earliest_completion
    if policy == "shortest-queue":
        return shortest_queue
    return round_robin()

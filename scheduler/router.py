"""Routing policies: pure functions from a snapshot of the devices to the index of one of them.

earliest-completion (default): the device whose predicted finish time for this batch is soonest,
counting the work already assigned to it. shortest-queue and round-robin exist for comparison.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from scheduler.latency import LatencyFit

Policy = Literal["earliest-completion", "shortest-queue", "round-robin"]


@dataclass(frozen=True)
class DeviceSnapshot:
    name: str
    fit: LatencyFit
    in_flight_batches: int  # running or waiting for a slot on this device
    parallel_slots: int
    running_remaining: tuple[float, ...]  # predicted seconds left of each running batch
    waiting: tuple[float, ...]  # predicted seconds of each batch waiting for a slot, FIFO
    max_outstanding_batches: int
    healthy: bool = True  # False while its circuit breaker is open

    @property
    def accepting(self) -> bool:
        return self.healthy and self.in_flight_batches < self.max_outstanding_batches

    def predicted_start(self) -> float:
        """Seconds until a slot is free for a batch sent now: the waiting batches take the
        slots as they free up (FIFO), this one the first slot free after them."""
        slots = [
            *self.running_remaining,
            *[0.0] * (self.parallel_slots - len(self.running_remaining)),
        ]
        heapq.heapify(slots)
        for seconds in self.waiting:
            heapq.heappush(slots, heapq.heappop(slots) + seconds)
        return slots[0]

    def predicted_finish(self, rows: int) -> float:
        """Seconds from now until a batch of `rows` sent here now would be done."""
        return self.predicted_start() + self.fit.predict(rows)


class Predictable(Protocol):
    """What the load model reads of a device: a snapshot, or the live device itself (the
    per-request admission check reads it without building a snapshot)."""

    @property
    def healthy(self) -> bool: ...
    @property
    def fit(self) -> LatencyFit: ...
    @property
    def parallel_slots(self) -> int: ...
    def predicted_start(self) -> float: ...


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

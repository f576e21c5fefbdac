"""Requests, their parts and batches; `take_batch` packs queued rows into one batch (pure)."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

import numpy as np

Inputs = dict[str, np.ndarray]


Outputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class Scored:
    outputs: Outputs  # every output of the model, its rows in the request's order
    devices: tuple[str, ...]  # the devices that scored its rows
    queue_seconds: float  # from enqueue until its last part was dispatched
    compute_seconds: float  # backend time of the batches its rows ran in

    @property
    def scores(self) -> np.ndarray:
        """The first output: the score of a single-output ranker."""
        return next(iter(self.outputs.values()))


@dataclass(eq=False)
class Request:
    """Rows submitted together; may be split across batches and reassembled in order."""

    inputs: Inputs
    rows: int
    future: asyncio.Future[Scored]
    enqueued_at: float
    priority: int = 0  # 0 high, 1 low
    taken: int = 0  # rows already placed in batches (or given up: expired, cancelled)
    results: dict[int, Outputs] = field(default_factory=dict)  # offset -> outputs
    done_rows: int = 0
    devices: set[str] = field(default_factory=set)
    queue_seconds: float = 0.0
    compute_seconds: float = 0.0
    timer: asyncio.TimerHandle | None = None  # fires at the deadline

    @property
    def remaining(self) -> int:
        return self.rows - self.taken

    def deliver(
        self, offset: int, outputs: Outputs, rows: int, device: str, dispatched_at: float,
        seconds: float,
    ) -> None:  # fmt: skip
        """Record the outputs of one part; resolve the future when every row is back."""
        if self.future.done():
            return
        if rows == self.rows:  # the whole request in one part (the usual case): nothing to merge
            queued = max(0.0, dispatched_at - self.enqueued_at)
            self.future.set_result(Scored(outputs, (device,), queued, seconds))
            return
        self.results[offset] = outputs
        self.devices.add(device)
        self.queue_seconds = max(self.queue_seconds, dispatched_at - self.enqueued_at)
        self.compute_seconds += seconds
        self.done_rows += rows
        if self.done_rows == self.rows:
            parts = [self.results[k] for k in sorted(self.results)]
            merged = (
                {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
                if len(parts) > 1
                else parts[0]
            )
            devices = tuple(sorted(self.devices))
            self.future.set_result(
                Scored(merged, devices, self.queue_seconds, self.compute_seconds)
            )

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


@dataclass(frozen=True)
class Part:
    request: Request
    offset: int  # first row of the request in this part
    rows: int
    batch_offset: int  # first row of this part in the batch


@dataclass(frozen=True)
class Batch:
    inputs: Inputs
    parts: tuple[Part, ...]
    rows: int
    oldest_enqueued_at: float


def take_batch(queue: deque[Request], max_rows: int) -> tuple[list[Part], int]:
    """Pop up to `max_rows` rows from the head of the queue, in order; a request larger than the
    room left is split and its remainder stays at the head. Requests cancelled while queued are
    dropped before they cost compute. Returns the parts and the number of rows dropped."""
    parts: list[Part] = []
    filled = dropped = 0
    while queue and filled < max_rows:
        request = queue[0]
        if request.future.done():  # cancelled (client gone) or failed
            dropped += queue.popleft().remaining
            continue
        rows = min(request.remaining, max_rows - filled)
        parts.append(Part(request, request.taken, rows, filled))
        request.taken += rows
        filled += rows
        if request.remaining == 0:
            queue.popleft()
    return parts, dropped


def assemble(parts: list[Part]) -> Batch:
    if len(parts) == 1:  # one request's rows (the usual case): nothing to concatenate
        [part] = parts
        whole = part.request.inputs
        inputs = whole if part.rows == part.request.rows else {
            name: array[part.offset : part.offset + part.rows] for name, array in whole.items()
        }  # fmt: skip
        return Batch(inputs, (part,), part.rows, part.request.enqueued_at)
    names = parts[0].request.inputs.keys()
    inputs = {
        name: np.concatenate([p.request.inputs[name][p.offset : p.offset + p.rows] for p in parts])
        for name in names
    }
    return Batch(
        inputs=inputs,
        parts=tuple(parts),
        rows=sum(p.rows for p in parts),
        oldest_enqueued_at=min(p.request.enqueued_at for p in parts),
    )

"""The batcher: two queues bounded together in rows (high priority first), the batching window
and taking a batch off them. It knows nothing of devices but two questions it is handed: would an
idle device score these rows within the window, and is there a device that takes work now."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from scheduler.batch import Part, Request, take_batch
from scheduler.errors import ServingError


@dataclass(frozen=True)
class Window:
    max_batch_rows: int
    max_queue_delay_seconds: float
    # Elastic: dispatch at once while an idle device would score the queued rows within the
    # window. False: every batch waits the whole window (or until full), for comparison.
    elastic: bool = True


class Batcher:
    def __init__(self, window: Window, clock: Callable[[], float],
                 idle_within: Callable[[int, float], bool],
                 device_free: Callable[[], Awaitable[None]],
                 on_settled: Callable[[Request], None],
                 on_arrival: Callable[[], None] | None = None) -> None:  # fmt: skip
        self.window = window
        self._on_settled = on_settled  # the one done callback a request's future gets
        # Who hears of a request's arrival: the batch loop (`wake`), unless the scheduler takes
        # batches that may leave at once itself (`closes_now`, `take`).
        self._on_arrival = on_arrival or self.wake
        self._clock = clock
        self._idle_within = idle_within  # (rows, seconds): an idle device would score them in time
        self._device_free = device_free  # returns once some device takes work
        self._queues: tuple[deque[Request], deque[Request]] = (deque(), deque())  # HIGH, LOW
        self.queued_rows = [0, 0]  # by priority
        self._changed = asyncio.Event()  # a request arrived or a device finished a batch

    @property
    def queued_requests(self) -> int:
        return sum(len(q) for q in self._queues)

    @property
    def total_queued_rows(self) -> int:
        return sum(self.queued_rows)

    def put(self, request: Request) -> None:
        self._queues[request.priority].append(request)
        self.queued_rows[request.priority] += request.rows
        request.future.add_done_callback(lambda _: self._settled(request))
        self._on_arrival()

    def wake(self) -> None:
        """Wake the batch loop (waiting in `next_batch`)."""
        self._changed.set()

    def notify(self) -> None:
        """A device turned idle: it may end an elastic window (with nothing queued there is no
        window to end, and waking the batch loop would only cost a turn of it)."""
        if self._queues[0] or self._queues[1]:
            self._changed.set()

    def _settled(self, request: Request) -> None:
        """However the future ended, stop its timer and give back the rows it no longer needs."""
        if request.timer is not None:
            request.timer.cancel()
        if request.remaining:
            self.queued_rows[request.priority] -= request.remaining
            request.taken = request.rows  # the batcher drops it without counting it again
        self._on_settled(request)

    async def next_batch(self) -> tuple[list[Part], float, str]:
        """Wait until a batch should leave and take it: its parts (possibly none, when every
        request queued was cancelled meanwhile), when its oldest row arrived, and what closed the
        window: "idle" (a device was idle), "full" (max_batch_rows queued) or "window"."""
        oldest, closed_by = await self._wait()
        return self.take(), oldest, closed_by

    def take(self) -> list[Part]:
        """A batch's parts off the queues, high priority first (none when every request queued
        was cancelled meanwhile)."""
        parts: list[Part] = []
        for priority, queue in enumerate(self._queues):
            room = self.window.max_batch_rows - sum(p.rows for p in parts)
            taken, dropped = take_batch(queue, room)
            self.queued_rows[priority] -= sum(p.rows for p in taken) + dropped
            parts += taken
        return parts

    def closes_now(self) -> str | None:
        """What closes the window now: "full" (max_batch_rows queued) or "idle" (elastic, and an
        idle device would score the queued rows within the window); None while it stays open."""
        rows = self.total_queued_rows
        if rows >= self.window.max_batch_rows:
            return "full"
        if self.window.elastic and self._idle_within(rows, self.window.max_queue_delay_seconds):
            return "idle"
        return None

    async def _wait(self) -> tuple[float, str]:
        while not any(self._queues):
            self._changed.clear()
            await self._changed.wait()
        oldest = min(q[0].enqueued_at for q in self._queues if q)
        window = self.window
        deadline = oldest + window.max_queue_delay_seconds
        # Elastic window: with a device idle, waiting only adds latency, so dispatch at once;
        # while every device is busy, rows wait and grow the next batch until one turns idle or
        # the window closes.
        while True:
            closed_by = self.closes_now() or "window"
            if closed_by != "window":
                break
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            self._changed.clear()
            try:  # not wait_for: on 3.11 it can swallow a cancellation that races the wake-up
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
            except TimeoutError:
                break
        await self._device_free()
        return oldest, closed_by

    def fail_all(self, error: ServingError) -> None:
        for queue in self._queues:
            while queue:
                queue.popleft().fail(error)

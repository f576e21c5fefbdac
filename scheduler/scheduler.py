"""The dynamic-batching scheduler: a queue bounded in rows, a batcher task and device dispatch.

The batcher waits for the first request, then for `max_queue_delay` after it arrived or until a
full batch is queued, then for a device that accepts work (back-pressure keeps requests in the
bounded queue, where they grow the next batch), packs the batch, asks the router for a device and
hands the batch over. Every future is resolved exactly once: scores, or an error naming the cause.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from scheduler.batch import Batch, Inputs, Request, Scored, assemble, take_batch
from scheduler.device import Device
from scheduler.errors import BatchFailed, NotReady, Overloaded, ServingError
from scheduler.metrics import SchedulerMetrics
from scheduler.router import Router

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_rows: int
    max_queue_delay_seconds: float
    max_queue_rows: int


@dataclass(frozen=True)
class QueueStatistics:
    queued_requests: int
    queued_rows: int
    in_flight_batches: dict[str, int]


class Scheduler:
    def __init__(
        self,
        devices: Sequence[Device],
        router: Router,
        config: BatchingConfig,
        metrics: SchedulerMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not devices:
            raise ValueError("the scheduler needs at least one device")
        self.devices = list(devices)
        self._router = router
        self._config = config
        self._metrics = metrics
        self._clock = clock  # the simulation passes its virtual clock
        self._queue: deque[Request] = deque()
        self._queued_rows = 0
        self._arrived = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._dispatches: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._batch_loop(), name="batcher")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def statistics(self) -> QueueStatistics:
        return QueueStatistics(
            queued_requests=len(self._queue),
            queued_rows=self._queued_rows,
            in_flight_batches={d.name: d.in_flight_batches for d in self.devices},
        )

    def submit_nowait(self, inputs: Inputs) -> asyncio.Future[Scored]:
        """Queue the rows of `inputs`; refuse at once (Overloaded) when the queue is full."""
        if not self.running:
            raise NotReady(f"the batcher is not running ({self._failure or 'not started'})")
        rows = len(next(iter(inputs.values())))
        if rows == 0:
            raise ValueError("a request needs at least one row")
        if self._queued_rows + rows > self._config.max_queue_rows:
            if self._metrics:
                self._metrics.refused.labels(reason="queue_full").inc()
            raise Overloaded(
                f"queue full: {self._queued_rows} rows queued, limit {self._config.max_queue_rows}",
                retry_after_seconds=self._predicted_drain_seconds(),
            )
        future: asyncio.Future[Scored] = asyncio.get_running_loop().create_future()
        self._queue.append(Request(inputs, rows, future, self._clock()))
        self._queued_rows += rows
        self._arrived.set()
        return future

    async def submit(self, inputs: Inputs) -> Scored:
        return await self.submit_nowait(inputs)

    def _predicted_drain_seconds(self) -> float:
        rows_per_second = sum(
            self._config.max_batch_rows / max(d.latency.predict(self._config.max_batch_rows), 1e-6)
            for d in self.devices
        )
        return self._queued_rows / max(rows_per_second, 1e-6)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self._dispatches, return_exceptions=True)
        self._fail_queued(NotReady("the server is shutting down"))

    def _fail_queued(self, error: ServingError) -> None:
        while self._queue:
            self._queue.popleft().fail(error)
        self._queued_rows = 0

    async def _batch_loop(self) -> None:
        try:
            while True:
                await self._wait_for_batch()
                parts, dropped = take_batch(self._queue, self._config.max_batch_rows)
                taken = sum(p.rows for p in parts)
                self._queued_rows -= taken + dropped
                if parts:
                    self._dispatch(assemble(parts))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # never leave a future hanging
            self._failure = exc
            log.exception("the batcher died; failing every queued request")
            self._fail_queued(BatchFailed(f"the batcher died: {exc!r}"))
            raise

    async def _wait_for_batch(self) -> None:
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = self._queue[0].enqueued_at + self._config.max_queue_delay_seconds
        while self._queued_rows < self._config.max_batch_rows:
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
        while not any(d.snapshot().accepting for d in self.devices):
            self._slot_freed.clear()
            await self._slot_freed.wait()

    def _dispatch(self, batch: Batch) -> None:
        device = self.devices[self._router([d.snapshot() for d in self.devices], batch.rows)]
        task = asyncio.create_task(self._run(device, batch))
        self._dispatches.add(task)
        task.add_done_callback(self._dispatches.discard)

    async def _run(self, device: Device, batch: Batch) -> None:
        started = self._clock()
        if self._metrics:
            self._metrics.observe_dispatch(batch, started, self._config.max_batch_rows)
        try:
            scores, seconds = await device.run(batch.inputs, batch.rows)
            if self._metrics:
                self._metrics.observe_batch(device, batch.rows, seconds)
            for part in batch.parts:
                part_scores = scores[part.batch_offset : part.batch_offset + part.rows]
                part.request.deliver(part.offset, part_scores, device.name, started, seconds)
        except BatchFailed as error:
            log.warning("%s", error)
            for part in batch.parts:
                part.request.fail(error)
        except BaseException as exc:  # cancelled or a bug: still resolve every future
            for part in batch.parts:
                part.request.fail(BatchFailed(f"batch on {device.name} did not finish: {exc!r}"))
            raise
        finally:
            self._slot_freed.set()

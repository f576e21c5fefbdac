"""The dispatcher: route a batch to a device, run it, and if the device fails or stalls trip its
breaker and retry the batch once on another, so callers see no error when another one can serve.
Every part of a batch is resolved exactly once: scores, or an error naming the cause."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from scheduler.batch import Batch, Outputs
from scheduler.device import Device
from scheduler.errors import BatchFailed
from scheduler.load import RecentWork
from scheduler.metrics import ModelMetrics
from scheduler.router import Router

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(self, devices: Sequence[Device], router: Router, max_batch_rows: int,
                 clock: Callable[[], float], recent: RecentWork,
                 metrics: ModelMetrics | None = None,
                 on_freed: Callable[[], None] = lambda: None) -> None:  # fmt: skip
        self.devices = list(devices)
        self._router = router
        self._max_batch_rows = max_batch_rows
        self._clock = clock
        self._recent = recent
        self._metrics = metrics
        self._on_freed = on_freed  # a device finished a batch (or came back)
        self._slot_freed = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()

    def idle_within(self, rows: int, seconds: float) -> bool:
        """An idle healthy device would score `rows` within `seconds`: waiting longer for a
        fuller batch would only add latency."""
        return any(
            d.healthy and d.in_flight_batches == 0 and d.latency.predict(rows) <= seconds
            for d in self.devices
        )

    async def device_free(self) -> None:
        """Return once some device accepts work (back-pressure keeps rows in the queue, where
        they grow the next batch)."""
        while not any(d.accepting for d in self.devices):
            self._slot_freed.clear()
            await self._slot_freed.wait()

    def freed(self) -> None:
        self._slot_freed.set()
        self._on_freed()

    def choose(self, batch: Batch, excluded: Device | None = None) -> Device | None:
        candidates = [d for d in self.devices if d.healthy and d is not excluded]
        if len(candidates) < 2:  # no choice to make: no snapshots to take
            return candidates[0] if candidates else None
        return candidates[self._router([d.snapshot() for d in candidates], batch.rows)]

    def dispatch(self, batch: Batch) -> Coroutine[Any, Any, None] | None:
        """Start the batch on a device's own task; or, for a device that runs batches on the
        event loop's thread, return the run for the caller to await: it runs to its end without
        yielding (nothing else could run meanwhile anyway), and a task would cost a turn."""
        device = self.choose(batch) or self.devices[0]  # none healthy: the batch fails there
        run = self._run(device, batch)
        if device.on_loop:
            return run
        task = asyncio.create_task(run)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return None

    @property
    def busy(self) -> bool:
        return bool(self._running)

    async def stop(self) -> None:
        """Wait for the batches running now."""
        await asyncio.gather(*self._running, return_exceptions=True)

    async def _run(self, device: Device, batch: Batch) -> None:
        started = self._dispatched(batch)
        try:
            try:
                fallback = any(d.healthy and d is not device for d in self.devices)
                outputs, seconds = await device.run(batch.inputs, batch.rows, fallback)
            except BatchFailed as error:
                self._tripped(device, error)
                retry_on = self.choose(batch, excluded=device)
                if retry_on is None:
                    raise
                log.info(
                    "retrying a %d-row batch from %s on %s", batch.rows, device.name, retry_on.name
                )
                if self._metrics:
                    self._metrics.batch_retried()
                device = retry_on
                outputs, seconds = await device.run(batch.inputs, batch.rows)
            self._finished(device, batch, started, outputs, seconds)
        except BatchFailed as error:
            log.warning("%s", error)
            self._failed(batch, error)
        except BaseException as exc:  # cancelled or a bug: still resolve every future
            self._failed(batch, BatchFailed(f"batch on {device.name} did not finish: {exc!r}"))
            raise
        finally:
            self.freed()

    def run_here(self, batch: Batch) -> None:
        """`_run` on the one device, on the loop's thread, to its end now (called outside any
        task: no coroutine, no turn). With no other device there is no retry."""
        [device] = self.devices
        started = self._dispatched(batch)
        try:
            try:
                outputs, seconds = device.run_here(batch.inputs, batch.rows)
            except BatchFailed as error:
                self._tripped(device, error)
                raise
            self._finished(device, batch, started, outputs, seconds)
        except BatchFailed as error:
            log.warning("%s", error)
            self._failed(batch, error)
        except BaseException as exc:  # a bug: still resolve every future
            self._failed(batch, BatchFailed(f"batch on {device.name} did not finish: {exc!r}"))
            raise
        finally:
            self.freed()

    def _dispatched(self, batch: Batch) -> float:
        started = self._clock()
        if self._metrics:
            self._metrics.observe_dispatch(batch, started, self._max_batch_rows)
        return started

    def _tripped(self, device: Device, error: BatchFailed) -> None:
        device.breaker.trip(self._clock(), str(error))
        if self._metrics:
            self._metrics.device_failed(device)

    def _finished(self, device: Device, batch: Batch, started: float, outputs: Outputs,
                  seconds: float) -> None:  # fmt: skip
        """Each part's rows of the outputs to its request, the batch counted."""
        if self._metrics:
            self._metrics.observe_batch(device, batch.rows, seconds)
        self._recent.record(self._clock(), batch.rows, started - batch.oldest_enqueued_at, seconds)
        for part in batch.parts:
            rows = slice(part.batch_offset, part.batch_offset + part.rows)
            mine = {name: output[rows] for name, output in outputs.items()}
            part.request.deliver(part.offset, mine, part.rows, device.name, started, seconds)

    @staticmethod
    def _failed(batch: Batch, error: BatchFailed) -> None:
        for part in batch.parts:
            part.request.fail(error)

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

from scheduler.batch import Batch, Inputs, Part, Request, Scored, assemble, take_batch
from scheduler.device import Device
from scheduler.errors import BatchFailed, DeadlineExceeded, NotReady, Overloaded, ServingError
from scheduler.load import LoadReport, RecentWork, Saturation, headroom
from scheduler.metrics import SchedulerMetrics
from scheduler.router import Router

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_rows: int
    max_queue_delay_seconds: float
    max_queue_rows: int
    # Elastic window: dispatch at once while an idle device would score the queued rows within
    # it. False: every batch waits the whole window (or until full), for comparison.
    elastic: bool = True
    # A low-priority request is admitted only if predicted to finish within this fraction of
    # its timeout, so under pressure low priority is shed first and high priority keeps its latency.
    low_priority_admit_fraction: float = 0.5
    # A failed or stalled device leaves routing for this long, then a probe batch may bring it back.
    cool_down_seconds: float = 5.0
    probe_interval_seconds: float = 0.5
    # Predicted queueing delay above which the scheduler reports itself saturated.
    saturation_wait_seconds: float = 0.2


HIGH, LOW = 0, 1


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
        self._queues: tuple[deque[Request], deque[Request]] = (deque(), deque())  # HIGH, LOW
        self._queued_rows = [0, 0]
        self._changed = asyncio.Event()  # a request arrived or a device finished a batch
        self._slot_freed = asyncio.Event()
        self._dispatches: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._recent = RecentWork()
        self._saturation = Saturation(config.saturation_wait_seconds)

    def start(self) -> None:
        self._task = asyncio.create_task(self._batch_loop(), name="batcher")
        self._prober = asyncio.create_task(self._probe_loop(), name="prober")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def statistics(self) -> QueueStatistics:
        return QueueStatistics(
            queued_requests=sum(len(q) for q in self._queues),
            queued_rows=sum(self._queued_rows),
            in_flight_batches={d.name: d.in_flight_batches for d in self.devices},
        )

    def submit_nowait(
        self, inputs: Inputs, timeout_seconds: float | None = None, priority: int = HIGH
    ) -> asyncio.Future[Scored]:
        """Queue the rows of `inputs`, or refuse at once: Overloaded when the queue is full or the
        request is predicted to miss its deadline. A queued request whose deadline passes fails
        with DeadlineExceeded at that moment."""
        if not self.running:
            raise NotReady(f"the batcher is not running ({self._failure or 'not started'})")
        rows = len(next(iter(inputs.values())))
        if rows == 0:
            raise ValueError("a request needs at least one row")
        queued = sum(self._queued_rows)
        if queued + rows > self._config.max_queue_rows:
            self._count_refusal("queue_full")
            raise Overloaded(
                f"queue full: {queued} rows queued, limit {self._config.max_queue_rows}",
                retry_after_seconds=self.predicted_completion(0, LOW),
            )
        if timeout_seconds is not None:
            predicted = self.predicted_completion(rows, priority)
            budget = timeout_seconds
            if priority == LOW:
                budget *= self._config.low_priority_admit_fraction
            if predicted > budget:
                self._count_refusal("deadline" if priority == HIGH else "deadline_low_priority")
                raise Overloaded(
                    f"cannot finish within {timeout_seconds * 1000:.0f} ms: predicted "
                    f"{predicted * 1000:.1f} ms",
                    retry_after_seconds=predicted,
                )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Scored] = loop.create_future()
        request = Request(inputs, rows, future, self._clock(), priority)
        if timeout_seconds is not None:
            request.timer = loop.call_later(timeout_seconds, self._expire, request, timeout_seconds)
        future.add_done_callback(lambda _: self._settled(request))
        self._queues[priority].append(request)
        self._queued_rows[priority] += rows
        self._changed.set()
        return future

    async def submit(
        self, inputs: Inputs, timeout_seconds: float | None = None, priority: int = HIGH
    ) -> Scored:
        return await self.submit_nowait(inputs, timeout_seconds, priority)

    def predicted_completion(self, rows: int, priority: int) -> float:
        """Seconds until `rows` submitted now would be scored: the rows queued ahead of them (of
        the same or higher priority) at the devices' combined rate, after the earliest free slot."""
        batch = self._config.max_batch_rows
        rate = sum(
            d.parallel_batches * batch / max(d.latency.predict(batch), 1e-9) for d in self.devices
        )
        ahead = self._queued_rows[HIGH] + (self._queued_rows[LOW] if priority == LOW else 0)
        snapshots = [d.snapshot() for d in self.devices]
        start = min(s.predicted_start() for s in snapshots)
        fixed = min(s.fit.predict(0) for s in snapshots)
        return start + fixed + (ahead + rows) / max(rate, 1e-9)

    def load(self) -> LoadReport:
        now = self._clock()
        healthy = [d for d in self.devices if d.healthy]
        batch = self._config.max_batch_rows
        capacity = sum(
            d.parallel_batches * batch / max(d.latency.predict(batch), 1e-9) for d in healthy
        )
        wait = self.predicted_completion(0, LOW) if healthy else float("inf")
        recent = self._recent.rows_per_second(now)
        utilisation = recent / capacity if capacity else 1.0
        threshold = self._config.saturation_wait_seconds
        stats = self.statistics()
        return LoadReport(
            queued_requests=stats.queued_requests,
            queued_rows=stats.queued_rows,
            predicted_wait_seconds=wait,
            in_flight_batches=stats.in_flight_batches,
            healthy_devices=[d.name for d in healthy],
            recent_rows_per_second=recent,
            capacity_rows_per_second=capacity,
            queue_to_compute_ratio=self._recent.queue_to_compute_ratio(now),
            headroom=headroom(utilisation, wait, threshold) if healthy else 0,
            saturated=self._saturation.update(wait),
        )

    def _count_refusal(self, reason: str) -> None:
        if self._metrics:
            self._metrics.refused.labels(reason=reason).inc()

    def _expire(self, request: Request, timeout_seconds: float) -> None:
        if not request.future.done():
            self._count_refusal("deadline_expired")
            request.fail(DeadlineExceeded(f"deadline of {timeout_seconds * 1000:.0f} ms passed"))

    def _settled(self, request: Request) -> None:
        """However the future ended, stop its timer and give back the rows it no longer needs."""
        if request.timer is not None:
            request.timer.cancel()
        if request.remaining:
            self._queued_rows[request.priority] -= request.remaining
            request.taken = request.rows  # the batcher drops it without counting it again

    async def stop(self) -> None:
        for task in (self._task, self._prober):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await asyncio.gather(*self._dispatches, return_exceptions=True)
        self._fail_queued(NotReady("the server is shutting down"))

    def _fail_queued(self, error: ServingError) -> None:
        for queue in self._queues:
            while queue:
                queue.popleft().fail(error)

    async def _batch_loop(self) -> None:
        try:
            while True:
                oldest, closed_by = await self._wait_for_batch()
                parts: list[Part] = []
                for priority, queue in enumerate(self._queues):  # high priority first
                    room = self._config.max_batch_rows - sum(p.rows for p in parts)
                    taken, dropped = take_batch(queue, room)
                    self._queued_rows[priority] -= sum(p.rows for p in taken) + dropped
                    parts += taken
                if parts:
                    if self._metrics:
                        self._metrics.observe_window(self._clock() - oldest, closed_by)
                    self._dispatch(assemble(parts))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # never leave a future hanging
            self._failure = exc
            log.exception("the batcher died; failing every queued request")
            self._fail_queued(BatchFailed(f"the batcher died: {exc!r}"))
            raise

    async def _wait_for_batch(self) -> tuple[float, str]:
        """Wait until a batch should leave; returns when its oldest row arrived and what closed
        the window: "idle" (a device was idle), "full" (max_batch_rows queued) or "window"."""
        while not any(self._queues):
            self._changed.clear()
            await self._changed.wait()
        oldest = min(q[0].enqueued_at for q in self._queues if q)
        deadline = oldest + self._config.max_queue_delay_seconds
        # Elastic window: with a device idle, waiting only adds latency, so dispatch at once;
        # while every device is busy, rows wait and grow the next batch until one turns idle or
        # the window closes.
        closed_by = "window"
        while True:
            if sum(self._queued_rows) >= self._config.max_batch_rows:
                closed_by = "full"
                break
            if self._config.elastic and self._device_idle():
                closed_by = "idle"
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
        while not any(d.snapshot().accepting for d in self.devices):
            self._slot_freed.clear()
            await self._slot_freed.wait()
        return oldest, closed_by

    def _device_idle(self) -> bool:
        """An idle device that would score the queued rows within the window: waiting longer
        for a fuller batch would only add latency."""
        rows = sum(self._queued_rows)
        window = self._config.max_queue_delay_seconds
        return any(
            d.healthy and d.in_flight_batches == 0 and d.latency.predict(rows) <= window
            for d in self.devices
        )

    def _choose(self, batch: Batch, excluded: Device | None = None) -> Device | None:
        candidates = [d for d in self.devices if d.healthy and d is not excluded]
        if not candidates:
            return None
        return candidates[self._router([d.snapshot() for d in candidates], batch.rows)]

    def _dispatch(self, batch: Batch) -> None:
        device = self._choose(batch) or self.devices[0]  # none healthy: the batch fails there
        task = asyncio.create_task(self._run(device, batch))
        self._dispatches.add(task)
        task.add_done_callback(self._dispatches.discard)

    async def _run(self, device: Device, batch: Batch) -> None:
        """Run a batch; if its device fails or stalls, take the device out of routing and retry
        the batch once on another device, so callers see no error when another one can serve."""
        started = self._clock()
        if self._metrics:
            self._metrics.observe_dispatch(batch, started, self._config.max_batch_rows)
        try:
            try:
                fallback = any(d.healthy and d is not device for d in self.devices)
                scores, seconds = await device.run(batch.inputs, batch.rows, fallback)
            except BatchFailed as error:
                device.trip(self._clock(), self._config.cool_down_seconds, str(error))
                if self._metrics:
                    self._metrics.device_failures.labels(device=device.name).inc()
                retry_on = self._choose(batch, excluded=device)
                if retry_on is None:
                    raise
                log.info(
                    "retrying a %d-row batch from %s on %s", batch.rows, device.name, retry_on.name
                )
                if self._metrics:
                    self._metrics.batch_retries.inc()
                device = retry_on
                scores, seconds = await device.run(batch.inputs, batch.rows)
            if self._metrics:
                self._metrics.observe_batch(device, batch.rows, seconds)
            waited = started - batch.oldest_enqueued_at
            self._recent.record(self._clock(), batch.rows, waited, seconds)
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
            self._device_freed()

    def _device_freed(self) -> None:
        self._slot_freed.set()
        self._changed.set()  # an idle device ends an elastic window

    async def _probe_loop(self) -> None:
        """Bring tripped devices back: after the cool-down, a one-row probe must succeed."""
        while True:
            await asyncio.sleep(self._config.probe_interval_seconds)
            for device in self.devices:
                if device.healthy or self._clock() < device.open_until:
                    continue
                if await device.probe():
                    self._device_freed()
                else:
                    device.open_until = self._clock() + self._config.cool_down_seconds

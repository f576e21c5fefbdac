"""The scheduler: admission by prediction, in front of a batcher, a dispatcher and the load model.

A request is refused at once when the queue is full or it is predicted to miss its deadline;
otherwise it is queued (`scheduler.batcher`), leaves in a batch when the window closes and a
device takes work, and is routed, run and if need be retried (`scheduler.dispatcher`); tripped
devices are probed back (`scheduler.breaker`). Capacity, predicted wait and headroom come from
device snapshots (`scheduler.load`), counting healthy devices only. Every future is resolved
exactly once: scores, or an error naming the cause.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from scheduler import load
from scheduler.batch import Batch, Inputs, Part, Request, Scored, assemble
from scheduler.batcher import Batcher, Window
from scheduler.breaker import probe_loop
from scheduler.device import Device
from scheduler.dispatcher import Dispatcher
from scheduler.errors import BatchFailed, DeadlineExceeded, NotReady, Overloaded
from scheduler.load import LoadReport, RecentWork, Saturation, headroom
from scheduler.metrics import ModelMetrics
from scheduler.router import DeviceSnapshot, Predictable, Router
from scheduler.served import Served

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
    low_priority_deadline_fraction: float = 0.5
    # How often tripped devices past their cool-down are probed.
    probe_interval_seconds: float = 0.5
    # Predicted queueing delay above which the scheduler reports itself saturated.
    saturation_wait_seconds: float = 0.2


HIGH, LOW = 0, 1
QUIET_GAP_SECONDS = 1.0  # the longest gap between arrivals the mean counts
GAP_WEIGHT = 0.1  # of the latest gap in the mean


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
        metrics: ModelMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not devices:
            raise ValueError("the scheduler needs at least one device")
        self.devices = list(devices)
        self._config = config
        self._metrics = metrics
        self._clock = clock  # the devices' too; the simulation passes its virtual clock
        self._recent = RecentWork()
        self._saturation = Saturation(config.saturation_wait_seconds)
        self._dispatcher = Dispatcher(
            self.devices, router, config.max_batch_rows, clock, self._recent, metrics,
            on_freed=self._batch_done,
        )  # fmt: skip
        window = Window(config.max_batch_rows, config.max_queue_delay_seconds, config.elastic)
        # One device, on the loop's thread (a one-core process): a batch that may leave at once
        # runs in a plain callback on the next turn (`_flush`), as the batch loop's task would
        # run it but without the task's wake-up, event and coroutines (some 20 us a request,
        # most of the scheduler's own cost). Requests that arrive in one turn still leave
        # together; the batch loop still waits out a window and a device that takes no work.
        # Where requests arrive seldom, the first of a turn that finds the device idle and
        # nothing queued runs at once in its caller's step (`_arrival_runs_now`): no queue,
        # timer, flush or wake-up (a third of the data plane's own work for such a request).
        self._lone_on_loop = lone_on_loop = len(self.devices) == 1 and self.devices[0].on_loop
        # Arrivals, for running a lone request at once: the last one's time, the mean gap
        # (exponentially weighted; gaps capped at a second, so a quiet start reads as quiet).
        self._last_arrival = -float("inf")
        self._mean_gap = QUIET_GAP_SECONDS
        self._flush_handle: asyncio.Handle | None = None
        self._batcher = Batcher(window, clock, self._dispatcher.idle_within,
                                self._dispatcher.device_free, self._settled,
                                self._arrived if lone_on_loop else None)  # fmt: skip
        self._task: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self.served = Served()

    def start(self) -> None:
        self._task = asyncio.create_task(self._batch_loop(), name="batcher")
        self._prober = asyncio.create_task(
            probe_loop(self.devices, self._config.probe_interval_seconds, self._clock,
                       self._dispatcher.freed),
            name="prober",
        )  # fmt: skip

    @property
    def metrics(self) -> ModelMetrics | None:
        return self._metrics

    @property
    def batching(self) -> BatchingConfig:
        return self._config

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def statistics(self) -> QueueStatistics:
        return QueueStatistics(
            queued_requests=self._batcher.queued_requests,
            queued_rows=self._batcher.total_queued_rows,
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
        queued = self._batcher.total_queued_rows
        if queued + rows > self._config.max_queue_rows:
            self._count_refusal("queue_full")
            self.served.failed()
            raise Overloaded(
                f"queue full: {queued} rows queued, limit {self._config.max_queue_rows}",
                retry_after_seconds=self.predicted_completion(0, LOW),
            )
        if timeout_seconds is not None:
            predicted = self.predicted_completion(rows, priority)
            budget = timeout_seconds
            if priority == LOW:
                budget *= self._config.low_priority_deadline_fraction
            if predicted > budget:
                self._count_refusal("deadline" if priority == HIGH else "deadline_low_priority")
                self.served.failed()
                raise Overloaded(
                    f"cannot finish within {timeout_seconds * 1000:.0f} ms: predicted "
                    f"{predicted * 1000:.1f} ms",
                    retry_after_seconds=predicted,
                )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Scored] = loop.create_future()
        now = self._clock()
        request = Request(inputs, rows, future, now, priority)
        if self._lone_on_loop and self._arrival_runs_now(rows, now):
            # Later arrivals of this turn queue and leave together on the next.
            self._flush_handle = loop.call_soon(self._flush)
            self._run_here(assemble([Part(request, 0, rows, 0)]), 0.0, "idle")
            self._settled(request)
            return future
        if timeout_seconds is not None:
            request.timer = loop.call_later(timeout_seconds, self._expire, request, timeout_seconds)
        self._batcher.put(request)
        return future

    async def submit(
        self, inputs: Inputs, timeout_seconds: float | None = None, priority: int = HIGH
    ) -> Scored:
        return await self.submit_nowait(inputs, timeout_seconds, priority)

    def predicted_completion(self, rows: int, priority: int) -> float:
        """Seconds until `rows` submitted now would be scored, behind the rows queued ahead of
        them (of the same or higher priority); infinite with no healthy device."""
        return self._predicted(rows, priority, self.devices)  # read live: no snapshots per request

    def _predicted(self, rows: int, priority: int, devices: Sequence[Predictable]) -> float:
        queued = self._batcher.queued_rows
        ahead = queued[HIGH] + (queued[LOW] if priority == LOW else 0)
        return load.predicted_completion(devices, ahead, rows, self._config.max_batch_rows)

    def load(self) -> LoadReport:
        now = self._clock()
        snapshots = [d.snapshot() for d in self.devices]
        capacity = load.capacity_rows_per_second(snapshots, self._config.max_batch_rows)
        wait = self._update_saturation(snapshots)
        recent = self._recent.rows_per_second(now)
        utilisation = recent / capacity if capacity else 1.0
        healthy = [s.name for s in snapshots if s.healthy]
        stats = self.statistics()
        return LoadReport(
            queued_requests=stats.queued_requests,
            queued_rows=stats.queued_rows,
            predicted_wait_seconds=wait,
            in_flight_batches=stats.in_flight_batches,
            healthy_devices=healthy,
            recent_rows_per_second=recent,
            capacity_rows_per_second=capacity,
            queue_to_compute_ratio=self._recent.queue_to_compute_ratio(now),
            headroom=headroom(utilisation, wait, self._config.saturation_wait_seconds)
            if healthy
            else 0,
            saturated=self._saturation.saturated,
        )

    @property
    def saturated(self) -> bool:
        """The saturation state as the last batch, probe or poll left it."""
        return self._saturation.saturated

    def _update_saturation(self, snapshots: list[DeviceSnapshot] | None = None) -> float:
        """The predicted wait now; saturation follows it (with its hysteresis)."""
        wait = self._predicted(0, LOW, snapshots or self.devices)
        self._saturation.update(wait)
        return wait

    def _batch_done(self) -> None:
        """A device finished a batch or came back: it may end an elastic window, and saturation
        follows the predicted wait whether or not anyone polls the load."""
        self._batcher.notify()
        self._update_saturation()

    def _settled(self, request: Request) -> None:
        """A queued request's future resolved, however: Triton's statistics count it."""
        self.served.done(request.rows, request.enqueued_at, self._clock(), request.future)

    def _count_refusal(self, reason: str) -> None:
        if self._metrics:
            self._metrics.refused(reason)

    def _expire(self, request: Request, timeout_seconds: float) -> None:
        if not request.future.done():
            self._count_refusal("deadline_expired")
            request.fail(DeadlineExceeded(f"deadline of {timeout_seconds * 1000:.0f} ms passed"))

    def _arrival_runs_now(self, rows: int, now: float) -> bool:
        """Counting an arrival at `now`: whether it is the turn's first, nothing is queued, the
        lone device takes work and is idle, and requests arrive seldom enough for one to run
        alone (`load.runs_at_once`)."""
        gap = min(now - self._last_arrival, QUIET_GAP_SECONDS)
        self._last_arrival = now
        self._mean_gap += GAP_WEIGHT * (gap - self._mean_gap)
        if self._flush_handle is not None:
            return False
        device = self.devices[0]
        window = self._batcher.window
        return (
            window.elastic and not self._batcher.total_queued_rows and device.accepting
            and device.in_flight_batches == 0
            and load.runs_at_once(self._mean_gap, device.latency.predict(rows),
                                  window.max_queue_delay_seconds)
        )  # fmt: skip

    def _run_here(self, batch: Batch, waited: float, closed_by: str) -> None:
        """A batch on the lone device, now, in this step: a request run at once, or what a turn
        queued. Its window observed; a failure is logged (its requests are failed already)."""
        if self._metrics:
            self._metrics.observe_window(waited, closed_by)
        try:
            self._dispatcher.run_here(batch)
        except Exception:  # as the batch loop carries on
            log.exception("a batch failed unexpectedly")

    def _arrived(self) -> None:
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """What arrived in the last turn, as one batch on the lone device now; or, where the
        window stays open or the device takes no work, left to the batch loop."""
        self._flush_handle = None
        if not self._batcher.total_queued_rows:  # the turn's request ran at once; none after it
            return
        closed_by = self._batcher.closes_now()
        if closed_by is None or not self.devices[0].accepting:
            self._batcher.wake()
            return
        parts = self._batcher.take()
        if not parts:
            return
        batch = assemble(parts)
        self._run_here(batch, self._clock() - batch.oldest_enqueued_at, closed_by)

    async def drain(self, limit_seconds: float) -> None:
        """Wait, at most `limit_seconds`, until no request is queued and no batch runs: a version
        being replaced finishes what it accepted before it stops."""
        deadline = self._clock() + limit_seconds
        while self._batcher.queued_requests or self._dispatcher.busy:
            if self._clock() >= deadline:
                break
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        for task in (self._task, self._prober):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self._dispatcher.stop()
        self._batcher.fail_all(NotReady("the server is shutting down"))

    async def _batch_loop(self) -> None:
        try:
            while True:
                parts, oldest, closed_by = await self._batcher.next_batch()
                if parts:
                    if self._metrics:
                        self._metrics.observe_window(self._clock() - oldest, closed_by)
                    inline = self._dispatcher.dispatch(assemble(parts))
                    if inline is not None:
                        try:
                            await inline
                        except Exception:  # its requests are failed already; batch on
                            log.exception("a batch failed unexpectedly")
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # never leave a future hanging
            self._failure = exc
            log.exception("the batcher died; failing every queued request")
            self._batcher.fail_all(BatchFailed(f"the batcher died: {exc!r}"))
            raise

"""A device: one backend, its executor thread(s), a bound on batches in flight, a latency model
and a circuit breaker."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from scheduler.backend import Backend, Inputs, Outputs
from scheduler.breaker import CircuitBreaker
from scheduler.errors import BatchFailed
from scheduler.latency import LatencyFit, LatencyModel
from scheduler.router import DeviceSnapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StallPolicy:
    """A batch has stalled once it runs `multiple` times its predicted time, or `floor_seconds`
    if that is longer (timer and scheduling noise dwarf sub-millisecond predictions)."""

    multiple: float = 20.0
    floor_seconds: float = 0.05

    def seconds(self, predicted: float) -> float:
        return max(self.floor_seconds, self.multiple * predicted)


class Device:
    def __init__(
        self,
        backend: Backend,
        parallel_batches: int,
        latency_window: int = 256,
        batch_timeout_seconds: float | None = None,
        stall: StallPolicy | None = None,
        cool_down_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        slots: asyncio.Semaphore | None = None,
        on_loop: bool = False,
    ) -> None:
        self.backend = backend
        self.name = backend.name
        self.parallel_batches = parallel_batches
        self.latency = LatencyModel(latency_window)
        # On the event loop's own thread (`on_loop`), a batch costs no hand-off to a runtime
        # thread and back: on a process of one core that hand-off is pure overhead (the two
        # threads cannot run at once), some 60-100 us a batch. Otherwise a thread per batch slot.
        self.on_loop = on_loop
        self._executor = (
            None if on_loop else ThreadPoolExecutor(parallel_batches, thread_name_prefix=self.name)
        )
        # Batches running at once. Devices of several models on one physical device share one
        # semaphore (`slots`), so together they never run more than its parallel_batches.
        self._slots = slots or asyncio.Semaphore(parallel_batches)
        self.in_flight_batches = 0
        self._waiting: dict[int, float] = {}  # batch -> predicted seconds, in arrival order
        self._running: dict[int, tuple[float, float]] = {}  # batch -> (started, predicted)
        self._next_token = 0
        # The scheduler's clock (not the event loop's: under uvloop its resolution is a
        # millisecond, coarser than the predictions it would be compared with).
        self._clock = clock
        self.batch_timeout_seconds = batch_timeout_seconds
        self.stall = stall
        self.breaker = CircuitBreaker(self.name, cool_down_seconds)
        self.probe_inputs: Inputs | None = None

    @property
    def healthy(self) -> bool:
        return self.breaker.closed

    @property
    def max_outstanding_batches(self) -> int:
        """Batches it takes at once: one waiting for a slot beyond those running."""
        return self.parallel_batches + 1

    @property
    def accepting(self) -> bool:
        """As its snapshot would say, without building one."""
        return self.healthy and self.in_flight_batches < self.max_outstanding_batches

    @property
    def fit(self) -> LatencyFit:
        return self.latency.fit

    @property
    def parallel_slots(self) -> int:
        return self.parallel_batches

    def predicted_start(self) -> float:
        """As its snapshot would say: a free slot with no batch waiting (the usual case, and on
        the loop's thread always) is 0 without building one."""
        if not self._waiting and len(self._running) < self.parallel_batches:
            return 0.0
        return self.snapshot().predicted_start()

    def warm_up(self, sample: Inputs, sizes: tuple[int, ...], repeats: int = 3) -> float:
        """Run each size a few times (the first run of a shape is slow) and seed the model.
        Returns each size's fastest run, summed: the device's speed on these batches with a run
        the host preempted left out (one such run must not decide which runtime serves)."""
        self.probe_inputs = {name: array[:1] for name, array in sample.items()}
        speed = 0.0
        for rows in sizes:
            batch = {name: array[:rows] for name, array in sample.items()}
            self.backend.run(batch)
            fastest = math.inf
            for _ in range(repeats):
                started = time.perf_counter()
                self.backend.run(batch)
                seconds = time.perf_counter() - started
                self.latency.observe(rows, seconds)
                fastest = min(fastest, seconds)
            speed += fastest
        return speed

    def snapshot(self) -> DeviceSnapshot:
        now = self._clock()
        return DeviceSnapshot(
            name=self.name,
            fit=self.latency.fit,
            in_flight_batches=self.in_flight_batches,
            parallel_slots=self.parallel_batches,
            running_remaining=tuple(
                max(0.0, start + predicted - now) for start, predicted in self._running.values()
            ),
            waiting=tuple(self._waiting.values()),
            max_outstanding_batches=self.max_outstanding_batches,
            healthy=self.healthy,
        )

    async def probe(self) -> bool:
        """One row through the backend, within the batch timeout: True if it answered."""
        if self.probe_inputs is None:
            return False
        try:
            async with self._slots, asyncio.timeout(self.batch_timeout_seconds):
                await self.execute(self.probe_inputs, 1)
        except Exception as exc:  # any failure keeps the circuit open
            log.info("device %s probe failed: %r", self.name, exc)
            return False
        return True

    def timeout(self, predicted: float, fallback: bool) -> float | None:
        """How long a batch may run. With another device to retry on (`fallback`), a batch far
        past its predicted time has stalled: retried elsewhere it still meets its deadline, where
        the full batch timeout would not. Without one, waiting is better than failing."""
        if not fallback or self.stall is None:
            return self.batch_timeout_seconds
        early = self.stall.seconds(predicted)
        limit = self.batch_timeout_seconds
        return early if limit is None else min(early, limit)

    async def run(self, inputs: Inputs, rows: int, fallback: bool = False,
                  ) -> tuple[Outputs, float]:  # fmt: skip
        """Outputs and the seconds the backend took. Raises BatchFailed naming this device."""
        if self.on_loop:
            return self.run_here(inputs, rows)
        predicted = self.latency.predict(rows)
        timeout = self.timeout(predicted, fallback)
        token, self._next_token = self._next_token, self._next_token + 1
        self.in_flight_batches += 1
        self._waiting[token] = predicted
        try:
            async with self._slots:
                del self._waiting[token]
                self._running[token] = (self._clock(), predicted)
                deadline = asyncio.timeout(timeout)  # not wait_for
                try:
                    async with deadline:
                        outputs, seconds = await self.execute(inputs, rows)
                except Exception as exc:
                    if deadline.expired():
                        raise BatchFailed(
                            f"device {self.name} stalled: a {rows}-row batch ran past {timeout} s "
                            f"(predicted {predicted:.4f} s)"
                        ) from exc
                    raise BatchFailed(f"device {self.name} failed a batch: {exc}") from exc
        finally:
            self.in_flight_batches -= 1
            self._running.pop(token, None)
            self._waiting.pop(token, None)  # cancelled before it got a slot
        return self._checked(outputs, rows, seconds)

    def run_here(self, inputs: Inputs, rows: int) -> tuple[Outputs, float]:
        """`run` for a device on the loop's thread: the batch runs to its end now, and nothing
        else runs meanwhile, so there is no slot to wait for and no timer that could fire."""
        self.in_flight_batches += 1
        try:
            outputs, seconds = self._timed(inputs)
        except Exception as exc:
            raise BatchFailed(f"device {self.name} failed a batch: {exc}") from exc
        finally:
            self.in_flight_batches -= 1
        return self._checked(outputs, rows, seconds)

    def _checked(self, outputs: Outputs, rows: int, seconds: float) -> tuple[Outputs, float]:
        """A batch's outputs, each with its rows first, its time learnt by the latency model."""
        for name, output in outputs.items():
            if output.ndim == 0 or output.shape[0] != rows:
                raise BatchFailed(
                    f"device {self.name} returned output {name!r} of shape {output.shape} "
                    f"for {rows} rows"
                )
        self.latency.observe(rows, seconds)
        return outputs, seconds

    async def execute(self, inputs: Inputs, rows: int) -> tuple[Outputs, float]:
        """Run one batch on the event loop's thread or the executor's (where the backend releases
        the GIL while computing)."""
        del rows
        if self._executor is None:
            return self._timed(inputs)
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        outputs = await loop.run_in_executor(self._executor, self.backend.run, inputs)
        return outputs, time.perf_counter() - started

    def _timed(self, inputs: Inputs) -> tuple[Outputs, float]:
        """The backend's outputs for a batch, run on this thread, and the seconds it took."""
        started = time.perf_counter()
        return self.backend.run(inputs), time.perf_counter() - started

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        self.backend.close()

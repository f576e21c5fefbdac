"""A device: one backend, its executor thread(s), a bound on batches in flight, a latency model."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from scheduler.backend import Backend, Inputs
from scheduler.errors import BatchFailed
from scheduler.latency import LatencyModel
from scheduler.router import DeviceSnapshot

log = logging.getLogger(__name__)


class Device:
    def __init__(self, backend: Backend, parallel_batches: int, latency_window: int = 256) -> None:
        self.backend = backend
        self.name = backend.name
        self.parallel_batches = parallel_batches
        self.latency = LatencyModel(latency_window)
        self._executor = ThreadPoolExecutor(parallel_batches, thread_name_prefix=self.name)
        self._slots = asyncio.Semaphore(parallel_batches)
        self.in_flight_batches = 0
        self._waiting: dict[int, float] = {}  # batch -> predicted seconds, in arrival order
        self._running: dict[int, tuple[float, float]] = {}  # batch -> (started, predicted)
        self._next_token = 0
        self.rows_scored = 0

    def warm_up(self, sample: Inputs, sizes: tuple[int, ...], repeats: int = 3) -> None:
        """Run each size a few times (the first run of a shape is slow) and seed the model."""
        for rows in sizes:
            batch = {name: array[:rows] for name, array in sample.items()}
            self.backend.run(batch)
            for _ in range(repeats):
                started = time.perf_counter()
                self.backend.run(batch)
                self.latency.observe(rows, time.perf_counter() - started)

    def snapshot(self) -> DeviceSnapshot:
        now = asyncio.get_running_loop().time()
        return DeviceSnapshot(
            name=self.name,
            fit=self.latency.fit,
            in_flight_batches=self.in_flight_batches,
            parallel_slots=self.parallel_batches,
            running_remaining=tuple(
                max(0.0, start + predicted - now) for start, predicted in self._running.values()
            ),
            waiting=tuple(self._waiting.values()),
            max_outstanding_batches=self.parallel_batches + 1,
        )

    async def run(self, inputs: Inputs, rows: int) -> tuple[np.ndarray, float]:
        """Scores and the seconds the backend took. Raises BatchFailed naming this device."""
        predicted = self.latency.predict(rows)
        loop = asyncio.get_running_loop()
        token, self._next_token = self._next_token, self._next_token + 1
        self.in_flight_batches += 1
        self._waiting[token] = predicted
        try:
            async with self._slots:
                del self._waiting[token]
                self._running[token] = (loop.time(), predicted)
                try:
                    scores, seconds = await self.execute(inputs, rows)
                except Exception as exc:
                    raise BatchFailed(f"device {self.name} failed a batch: {exc}") from exc
        finally:
            self.in_flight_batches -= 1
            self._running.pop(token, None)
            self._waiting.pop(token, None)  # cancelled before it got a slot
        if scores.shape[0] != rows:
            raise BatchFailed(f"device {self.name} returned {scores.shape[0]} rows for {rows}")
        self.latency.observe(rows, seconds)
        self.rows_scored += rows
        return scores, seconds

    async def execute(self, inputs: Inputs, rows: int) -> tuple[np.ndarray, float]:
        """Run one batch on the executor thread; the backend releases the GIL while computing."""
        del rows
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        scores = await loop.run_in_executor(self._executor, self.backend.run, inputs)
        return scores, time.perf_counter() - started

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.backend.close()

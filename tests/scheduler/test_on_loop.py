"""Where a device runs its batches: on the event loop's thread (a process of one core), or on a
runtime thread of its own. Uses the FAKE backend (`scheduler.fake_backend`), a test double."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from app.dataplane.devices import runs_on_loop
from scheduler.device import Device
from scheduler.errors import BatchFailed
from scheduler.fake_backend import FakeBackend
from scheduler.router import earliest_completion
from scheduler.scheduler import BatchingConfig, Scheduler

pytestmark = pytest.mark.timeout(30)


class ThreadRecording(FakeBackend):
    def __init__(self) -> None:
        super().__init__("cpu")
        self.threads: list[int] = []

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.threads.append(threading.get_ident())
        return super().run(inputs)


def test_only_a_cpu_device_of_a_one_core_process_without_fault_injection_runs_on_the_loop() -> None:
    assert runs_on_loop("cpu", cores=1, faults=False)
    assert not runs_on_loop("cpu", cores=2, faults=False)
    assert not runs_on_loop("gpu", cores=1, faults=False)
    assert not runs_on_loop("cpu", cores=1, faults=True)  # an injected stall must not stall it


async def test_a_device_on_the_loop_runs_batches_on_the_loops_thread() -> None:
    inputs = {"x": np.ones((3, 2), dtype=np.float32)}
    for on_loop in (True, False):
        backend = ThreadRecording()
        device = Device(backend, parallel_batches=1, on_loop=on_loop)
        outputs, seconds = await device.run(inputs, 3)
        device.close()
        assert outputs["score"].tolist() == [2.0, 2.0, 2.0] and seconds >= 0
        assert (backend.threads == [threading.get_ident()]) is on_loop


async def test_a_scheduler_over_a_device_on_the_loop_batches_and_survives_a_failed_batch() -> None:
    config = BatchingConfig(max_batch_rows=8, max_queue_delay_seconds=0.05, max_queue_rows=64)
    backend = ThreadRecording()
    scheduler = Scheduler([Device(backend, 1, on_loop=True)], earliest_completion, config)
    scheduler.start()
    try:
        # Submitted in one turn: the first, the device idle, is scored at once in this step; the
        # two after it leave together on the next turn. All on this thread.
        futures = [
            scheduler.submit_nowait({"x": np.full((1, 2), v, np.float32)}) for v in (1, 2, 3)
        ]
        assert [f.done() for f in futures] == [True, False, False]
        assert [(await f).scores.tolist() for f in futures] == [[2.0], [4.0], [6.0]]
        assert backend.batches == [1, 2] and set(backend.threads) == {threading.get_ident()}
        backend.fail_with = RuntimeError("boom")
        with pytest.raises(BatchFailed, match="boom"):
            await scheduler.submit({"x": np.ones((1, 2), np.float32)})
        backend.fail_with = None
        assert scheduler.running  # the batch loop carried on
        scheduler.devices[0].breaker.close()  # the failure tripped it; as a probe would
        scores = (await scheduler.submit({"x": np.ones((3, 2), np.float32)})).scores.tolist()
        assert scores == [2.0, 2.0, 2.0]
    finally:
        await scheduler.stop()


def lone_device_scheduler(config: BatchingConfig, backend: FakeBackend) -> Scheduler:
    """A scheduler over one device on the loop's thread: the first request of a turn that may
    leave at once runs in its caller's step, the rest of the turn in a callback of the next, and
    the batch loop's task takes what must wait."""
    device = Device(backend, 1, cool_down_seconds=0.01, on_loop=True)
    device.probe_inputs = {"x": np.ones((1, 2), np.float32)}
    scheduler = Scheduler([device], earliest_completion, config)
    scheduler.start()
    return scheduler


async def test_a_lone_device_on_the_loop_still_waits_out_a_fixed_window() -> None:
    config = BatchingConfig(max_batch_rows=8, max_queue_delay_seconds=0.2, max_queue_rows=64,
                            elastic=False)  # fmt: skip
    backend = ThreadRecording()
    scheduler = lone_device_scheduler(config, backend)
    try:
        first = scheduler.submit_nowait({"x": np.full((1, 2), 1, np.float32)})
        for _ in range(5):  # turns of the loop: the window holds the first request back
            await asyncio.sleep(0)
        assert not first.done() and backend.batches == []
        second = scheduler.submit_nowait({"x": np.full((2, 2), 2, np.float32)})
        assert (await first).scores.tolist() == [2.0]
        assert (await second).scores.tolist() == [4.0, 4.0]
        assert backend.batches == [3]  # one batch when the window closed
    finally:
        await scheduler.stop()


async def test_a_lone_device_on_the_loop_takes_rows_beyond_a_full_batch_next() -> None:
    config = BatchingConfig(max_batch_rows=8, max_queue_delay_seconds=0.05, max_queue_rows=64)
    backend = ThreadRecording()
    scheduler = lone_device_scheduler(config, backend)
    try:
        futures = [
            scheduler.submit_nowait({"x": np.full((5, 2), v, np.float32)}) for v in (1, 2, 3)
        ]
        scores = [(await f).scores.tolist() for f in futures]
        assert scores == [[2.0] * 5, [4.0] * 5, [6.0] * 5]
        assert backend.batches == [5, 8, 2]  # the first at once, a full batch, then the rest
    finally:
        await scheduler.stop()


async def test_a_lone_device_on_the_loop_holds_requests_while_tripped_and_serves_them_after() -> (
    None
):
    config = BatchingConfig(max_batch_rows=8, max_queue_delay_seconds=0.01, max_queue_rows=64,
                            probe_interval_seconds=0.02)  # fmt: skip
    backend = ThreadRecording()
    scheduler = lone_device_scheduler(config, backend)
    try:
        backend.fail_with = RuntimeError("boom")
        with pytest.raises(BatchFailed, match="boom"):
            await scheduler.submit({"x": np.ones((1, 2), np.float32)})
        assert not scheduler.devices[0].healthy
        held = scheduler.submit_nowait({"x": np.full((2, 2), 3, np.float32)})
        for _ in range(5):
            await asyncio.sleep(0)
        assert not held.done() and backend.batches == []  # not run on the tripped device
        backend.fail_with = None  # the next probe passes and closes the breaker
        assert (await asyncio.wait_for(held, 10)).scores.tolist() == [6.0, 6.0]
        assert scheduler.devices[0].healthy and backend.batches[-1] == 2
    finally:
        await scheduler.stop()


async def test_a_lone_device_runs_requests_at_once_only_while_they_arrive_seldom() -> None:
    now = [0.0]  # the scheduler's clock, set here: when each request arrives

    def clock() -> float:
        return now[0]

    config = BatchingConfig(max_batch_rows=8, max_queue_delay_seconds=0.05, max_queue_rows=64)
    device = Device(FakeBackend("cpu", seconds_per_row=0.001), 1, clock=clock, on_loop=True)
    scheduler = Scheduler([device], earliest_completion, config, clock=clock)
    scheduler.start()
    at_once = []
    try:
        # Five requests 10 s apart, then 80 with no time between them (each on a turn of its
        # own): a run takes about 1 ms, so once the mean gap falls under about 4 ms they queue.
        for gap in [10.0] * 5 + [0.0] * 80:
            now[0] += gap
            future = scheduler.submit_nowait({"x": np.full((1, 2), 1, np.float32)})
            at_once.append(future.done())
            assert (await future).scores.tolist() == [2.0]
            await asyncio.sleep(0)
    finally:
        await scheduler.stop()
    assert all(at_once[:5]) and not any(at_once[-20:])

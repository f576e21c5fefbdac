"""Batcher and dispatch with FakeBackend, a test double whose timing the test controls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from scheduler.device import Device, StallPolicy
from scheduler.errors import BatchFailed, NotReady, Overloaded
from scheduler.fake_backend import FakeBackend
from scheduler.router import earliest_completion
from scheduler.scheduler import BatchingConfig, Scheduler

pytestmark = pytest.mark.timeout(30)


def rows(values: list[float]) -> dict[str, np.ndarray]:
    return {"x": np.array([[v, 0.0] for v in values], dtype=np.float32)}


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend("fake-cpu")


async def started(scheduler: Scheduler) -> AsyncIterator[Scheduler]:
    scheduler.start()
    try:
        yield scheduler
    finally:
        await scheduler.stop()


@pytest.fixture
async def scheduler(backend: FakeBackend) -> AsyncIterator[Scheduler]:
    config = BatchingConfig(max_batch_rows=4, max_queue_delay_seconds=0.05, max_queue_rows=10)
    async for s in started(Scheduler([Device(backend, 1)], earliest_completion, config)):
        yield s


async def wait_started(backend: FakeBackend) -> None:
    await asyncio.to_thread(backend.started.acquire, True, 5)


async def test_requests_are_batched_and_answered_in_order(
    scheduler: Scheduler, backend: FakeBackend
) -> None:
    backend.release.clear()
    first = scheduler.submit_nowait(rows([1, 2]))
    second = scheduler.submit_nowait(rows([3]))
    await wait_started(backend)
    assert not first.done() and not second.done()  # the backend holds the batch
    backend.release.set()
    assert (await first).scores.tolist() == [1, 2] and (await second).scores.tolist() == [3]
    assert backend.batches == [3]  # one batch for both requests


async def test_a_large_request_is_split_and_reassembled(
    scheduler: Scheduler, backend: FakeBackend
) -> None:
    values = [float(v) for v in range(10)]
    result = await scheduler.submit(rows(values))
    assert result.scores.tolist() == values
    assert result.devices == ("fake-cpu",)
    assert backend.batches == [4, 4, 2]


async def test_zero_delay_dispatches_at_once(backend: FakeBackend) -> None:
    config = BatchingConfig(max_batch_rows=64, max_queue_delay_seconds=0.0, max_queue_rows=64)
    async for s in started(Scheduler([Device(backend, 1)], earliest_completion, config)):
        # A lone row is not held back for company: with a 10 s window this would time out.
        await asyncio.wait_for(s.submit(rows([1])), timeout=5)
        assert backend.batches == [1]


async def test_a_full_queue_refuses_at_once(scheduler: Scheduler, backend: FakeBackend) -> None:
    backend.release.clear()
    held = scheduler.submit_nowait(rows([1] * 4))  # taken into a batch that blocks
    await wait_started(backend)
    queued = [scheduler.submit_nowait(rows([1] * 4)) for _ in range(2)]  # 8 rows queued
    with pytest.raises(Overloaded, match="queue full"):
        scheduler.submit_nowait(rows([1] * 4))
    assert scheduler.statistics().queued_rows == 8
    backend.release.set()
    for future in [held, *queued]:
        assert (await future).scores.tolist() == [1] * 4


async def test_cancelled_requests_cost_no_compute(
    scheduler: Scheduler, backend: FakeBackend
) -> None:
    backend.release.clear()
    held = scheduler.submit_nowait(rows([1] * 4))
    await wait_started(backend)
    gone = scheduler.submit_nowait(rows([5, 5]))
    kept = scheduler.submit_nowait(rows([7]))
    gone.cancel()  # the client went away while queued
    backend.release.set()
    assert (await kept).scores.tolist() == [7]
    await held
    assert backend.batches == [4, 1]


async def test_a_failing_backend_fails_its_batch_with_the_cause(backend: FakeBackend) -> None:
    config = BatchingConfig(
        max_batch_rows=4, max_queue_delay_seconds=0.0, max_queue_rows=10,
        probe_interval_seconds=0.01,
    )  # fmt: skip
    device = Device(backend, 1, cool_down_seconds=0.05)
    async for s in started(Scheduler([device], earliest_completion, config)):
        s.devices[0].probe_inputs = rows([0])
        backend.fail_with = RuntimeError("device lost")
        with pytest.raises(BatchFailed, match="fake-cpu failed a batch: device lost"):
            await s.submit(rows([1]))  # no other device to retry on
        assert not s.devices[0].healthy
        backend.fail_with = None
        # After the cool-down a probe brings the device back and the scheduler carries on.
        assert (await s.submit(rows([2]))).scores.tolist() == [2]
        assert s.devices[0].healthy


async def test_a_failed_batch_is_retried_on_another_device() -> None:
    broken, spare = FakeBackend("broken"), FakeBackend("spare")
    broken.fail_with = RuntimeError("device lost")
    devices = [Device(broken, 1), Device(spare, 1)]
    devices[0].latency.observe(1, 0.0001)  # the router prefers the broken one at first
    devices[1].latency.observe(1, 0.01)
    config = BatchingConfig(max_batch_rows=4, max_queue_delay_seconds=0.0, max_queue_rows=100)
    async for s in started(Scheduler(devices, earliest_completion, config)):
        results = await asyncio.gather(*(s.submit(rows([float(i)])) for i in range(10)))
        assert [r.scores.tolist() for r in results] == [[float(i)] for i in range(10)]
        assert all(r.devices == ("spare",) for r in results)
        assert (
            not devices[0].healthy and devices[0].breaker.failures >= 1
        )  # batches already sent there


async def test_a_stalled_batch_times_out_and_is_retried() -> None:
    stalled, spare = FakeBackend("stalled"), FakeBackend("spare")
    stalled.release.clear()
    devices = [Device(stalled, 1, batch_timeout_seconds=0.1), Device(spare, 1)]
    devices[0].latency.observe(1, 0.0001)
    devices[1].latency.observe(1, 0.01)
    config = BatchingConfig(max_batch_rows=4, max_queue_delay_seconds=0.0, max_queue_rows=100)
    async for s in started(Scheduler(devices, earliest_completion, config)):
        result = await s.submit(rows([7]))
        assert result.scores.tolist() == [7] and result.devices == ("spare",)
        assert not devices[0].healthy
        stalled.release.set()


async def test_a_stall_is_detected_long_before_the_batch_timeout_when_a_spare_can_serve() -> None:
    stalled, spare = FakeBackend("stalled"), FakeBackend("spare")
    stalled.release.clear()
    policy = StallPolicy(multiple=20.0, floor_seconds=0.05)
    devices = [Device(stalled, 1, batch_timeout_seconds=10.0, stall=policy), Device(spare, 1)]
    devices[0].latency.observe(1, 0.0001)
    devices[1].latency.observe(1, 0.01)
    config = BatchingConfig(max_batch_rows=4, max_queue_delay_seconds=0.0, max_queue_rows=100)
    async for s in started(Scheduler(devices, earliest_completion, config)):
        result = await asyncio.wait_for(s.submit(rows([7])), timeout=2)  # not the 10 s timeout
        assert result.scores.tolist() == [7] and result.devices == ("spare",)
        assert not devices[0].healthy
        stalled.release.set()


async def test_a_slow_batch_is_not_failed_early_when_no_other_device_can_serve() -> None:
    slow = FakeBackend("slow")
    slow.release.clear()
    policy = StallPolicy(multiple=20.0, floor_seconds=0.05)
    device = Device(slow, 1, batch_timeout_seconds=10.0, stall=policy)
    device.latency.observe(1, 0.0001)
    config = BatchingConfig(max_batch_rows=4, max_queue_delay_seconds=0.0, max_queue_rows=100)
    async for s in started(Scheduler([device], earliest_completion, config)):
        pending = s.submit_nowait(rows([3]))
        await asyncio.sleep(0.3)  # six times the stall floor
        assert not pending.done()
        slow.release.set()
        assert (await pending).scores.tolist() == [3]
        assert device.healthy


async def test_stop_fails_queued_requests_and_refuses_new_ones(backend: FakeBackend) -> None:
    config = BatchingConfig(max_batch_rows=4, max_queue_delay_seconds=10.0, max_queue_rows=10)
    s = Scheduler([Device(backend, 1)], earliest_completion, config)
    s.start()
    backend.release.clear()
    held = s.submit_nowait(rows([1]))  # keeps the only device busy
    await asyncio.to_thread(backend.started.acquire, True, 5)
    waiting = s.submit_nowait(rows([2]))  # no idle device: queued
    stopping = asyncio.create_task(s.stop())
    await asyncio.sleep(0.01)  # the batcher is stopped; the running batch may finish
    backend.release.set()
    assert (await held).scores.tolist() == [1]
    await stopping
    with pytest.raises(NotReady, match="shutting down"):
        await waiting
    with pytest.raises(NotReady):
        s.submit_nowait(rows([1]))


async def test_rows_queued_behind_a_busy_device_leave_when_it_turns_idle(
    backend: FakeBackend,
) -> None:
    config = BatchingConfig(max_batch_rows=64, max_queue_delay_seconds=10.0, max_queue_rows=64)
    async for s in started(Scheduler([Device(backend, 1)], earliest_completion, config)):
        backend.release.clear()
        held = s.submit_nowait(rows([1]))
        await wait_started(backend)
        waiting = [s.submit_nowait(rows([float(i)])) for i in (2, 3)]
        await asyncio.sleep(0.05)
        assert not any(w.done() for w in waiting)
        backend.release.set()
        # Not after the 10 s window: as soon as the device is free, in one batch.
        answers = await asyncio.wait_for(asyncio.gather(held, *waiting), timeout=5)
        assert [a.scores.tolist() for a in answers] == [[1], [2], [3]]
        assert backend.batches == [1, 2]


async def test_the_window_is_skipped_while_a_device_is_idle(backend: FakeBackend) -> None:
    config = BatchingConfig(max_batch_rows=64, max_queue_delay_seconds=10.0, max_queue_rows=64)
    async for s in started(Scheduler([Device(backend, 1)], earliest_completion, config)):
        # The device is idle and would finish within the window: no reason to wait 10 s.
        loop = asyncio.get_running_loop()
        started_at = loop.time()
        assert (await asyncio.wait_for(s.submit(rows([1])), timeout=5)).scores.tolist() == [1]
        assert loop.time() - started_at < 1.0  # far from the window
        assert backend.batches == [1]


async def test_a_fixed_window_waits_even_with_a_device_idle(backend: FakeBackend) -> None:
    config = BatchingConfig(
        max_batch_rows=64, max_queue_delay_seconds=0.2, max_queue_rows=64, elastic=False
    )
    async for s in started(Scheduler([Device(backend, 1)], earliest_completion, config)):
        loop = asyncio.get_running_loop()
        started_at = loop.time()
        await asyncio.wait_for(s.submit(rows([1])), timeout=5)
        assert loop.time() - started_at >= 0.19  # the whole window, idle device or not


async def test_batches_spread_over_devices_by_predicted_finish() -> None:
    slow, fast = FakeBackend("slow"), FakeBackend("fast")
    devices = [Device(slow, 1), Device(fast, 1)]
    devices[0].latency.observe(1, 1.0)
    devices[1].latency.observe(1, 0.001)
    config = BatchingConfig(max_batch_rows=1, max_queue_delay_seconds=0.0, max_queue_rows=100)
    async for s in started(Scheduler(devices, earliest_completion, config)):
        results = await asyncio.gather(*(s.submit(rows([float(i)])) for i in range(20)))
        assert [r.scores.tolist() for r in results] == [[float(i)] for i in range(20)]
    assert len(fast.batches) > len(slow.batches)


async def test_saturation_follows_the_devices_without_anyone_polling(
    backend: FakeBackend,
) -> None:
    config = BatchingConfig(
        max_batch_rows=4, max_queue_delay_seconds=0.0, max_queue_rows=10,
        probe_interval_seconds=0.01, saturation_wait_seconds=0.2,
    )  # fmt: skip
    device = Device(backend, 1, cool_down_seconds=0.05)
    device.probe_inputs = rows([0])
    async for s in started(Scheduler([device], earliest_completion, config)):
        assert not s.saturated
        backend.fail_with = RuntimeError("device lost")
        with pytest.raises(BatchFailed):
            await s.submit(rows([1]))
        # No healthy device: the predicted wait is infinite, and the state says so at once,
        # though nothing called load().
        assert s.saturated
        backend.fail_with = None
        async with asyncio.timeout(5):
            while s.saturated:  # the probe brings the device back, and the state with it
                await asyncio.sleep(0.01)
        assert device.healthy


async def test_admission_counts_no_capacity_on_a_tripped_device() -> None:
    tripped, slow = FakeBackend("tripped"), FakeBackend("slow")
    devices = [Device(tripped, 1), Device(slow, 1)]
    devices[0].latency.observe(4, 0.0001)  # fast, but out of routing
    devices[1].latency.observe(4, 0.4)  # 0.1 s per row
    config = BatchingConfig(max_batch_rows=4, max_queue_delay_seconds=0.0, max_queue_rows=100)
    async for s in started(Scheduler(devices, earliest_completion, config)):
        fast_and_slow = s.predicted_completion(4, 0)
        devices[0].breaker.trip(0.0, "test")
        slow_only = s.predicted_completion(4, 0)
        assert fast_and_slow < 0.01  # the fast device's rate dominates while it serves
        # The slow device's fastest batch (0.4 s), then four rows at its rate (10 rows/s).
        assert slow_only == pytest.approx(0.8, rel=0.01)
        with pytest.raises(Overloaded, match="cannot finish within 100 ms"):
            s.submit_nowait(rows([1, 2, 3, 4]), timeout_seconds=0.1)
        assert s.load().capacity_rows_per_second == pytest.approx(10.0, rel=0.01)


async def test_devices_sharing_slots_never_run_more_batches_together_than_the_slots() -> None:
    # Two models' devices on one physical device (FAKE backends): one slot between them.
    slots = asyncio.Semaphore(1)
    first_backend, second_backend = FakeBackend("cpu"), FakeBackend("cpu")
    first = Device(first_backend, 1, slots=slots)
    second = Device(second_backend, 1, slots=slots)
    first_backend.release.clear()
    held = asyncio.create_task(first.run(rows([1]), 1))
    await wait_started(first_backend)
    waiting = asyncio.create_task(second.run(rows([2]), 1))
    await asyncio.sleep(0.1)
    assert not waiting.done() and second_backend.batches == []  # the slot is the first model's
    first_backend.release.set()
    (one, _), (two, _) = await held, await waiting
    assert one["score"].tolist() == [1] and two["score"].tolist() == [2]
    assert second_backend.batches == [1]

"""Deadlines, admission and priorities, with FakeBackend (a test double the test controls)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from scheduler.device import Device
from scheduler.errors import DeadlineExceeded, Overloaded
from scheduler.fake_backend import FakeBackend
from scheduler.router import earliest_completion
from scheduler.scheduler import HIGH, LOW, BatchingConfig, Scheduler

pytestmark = pytest.mark.timeout(30)


def rows(n: int, value: float = 1.0) -> dict[str, np.ndarray]:
    return {"x": np.full((n, 1), value, dtype=np.float32)}


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend("fake")


@pytest.fixture
async def scheduler(backend: FakeBackend) -> AsyncIterator[Scheduler]:
    device = Device(backend, 1)
    for size in (1, 100):  # the device scores 1,000 rows per second, 1 ms fixed
        device.latency.observe(size, 0.001 + size / 1000)
    config = BatchingConfig(max_batch_rows=100, max_queue_delay_seconds=0.0, max_queue_rows=10_000)
    s = Scheduler([device], earliest_completion, config)
    s.start()
    yield s
    backend.release.set()
    await s.stop()


async def hold_device(scheduler: Scheduler, backend: FakeBackend) -> asyncio.Future[object]:
    backend.release.clear()
    held = scheduler.submit_nowait(rows(1))
    await asyncio.to_thread(backend.started.acquire, True, 5)
    return held  # type: ignore[return-value]


async def test_a_queued_request_fails_at_its_deadline_not_when_a_device_frees(
    scheduler: Scheduler, backend: FakeBackend
) -> None:
    held = await hold_device(scheduler, backend)
    loop = asyncio.get_running_loop()
    begin = loop.time()
    waiting = scheduler.submit_nowait(rows(1), timeout_seconds=0.2)
    with pytest.raises(DeadlineExceeded, match="200 ms"):
        await waiting
    assert loop.time() - begin >= 0.19  # answered by its timer: the device is still held
    assert scheduler.statistics().queued_rows == 0  # its rows are given back at once
    backend.release.set()
    await held
    assert backend.batches == [1]  # the expired request cost no compute


async def test_admission_refuses_what_cannot_meet_its_deadline(scheduler: Scheduler) -> None:
    # 2,000 rows at 1,000 rows/s cannot finish in 0.5 s: refused before it waits.
    with pytest.raises(Overloaded, match="cannot finish within 500 ms") as refusal:
        scheduler.submit_nowait(rows(2000), timeout_seconds=0.5)
    assert refusal.value.retry_after_seconds > 1.9
    result = await scheduler.submit(rows(100), timeout_seconds=0.5)
    assert len(result.scores) == 100


async def test_low_priority_is_shed_first_and_high_priority_goes_first(
    scheduler: Scheduler, backend: FakeBackend
) -> None:
    held = await hold_device(scheduler, backend)
    backlog = [scheduler.submit_nowait(rows(100, 2.0), priority=LOW) for _ in range(3)]
    # 300 rows queued: about 0.3 s ahead. Low priority gets half its 0.5 s budget: refused.
    with pytest.raises(Overloaded):
        scheduler.submit_nowait(rows(50), timeout_seconds=0.5, priority=LOW)
    urgent = scheduler.submit_nowait(rows(50, 9.0), timeout_seconds=0.5, priority=HIGH)
    backend.release.set()
    await held
    assert (await urgent).scores.tolist() == [9.0] * 50
    for future in backlog:
        await future
    # The high-priority rows went first into the batch after the held one, ahead of the backlog.
    assert backend.batches[:2] == [1, 100]
    assert backend.batch_inputs[1][:50, 0].tolist() == [9.0] * 50

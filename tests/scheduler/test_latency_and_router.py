from __future__ import annotations

import threading

import numpy as np
import pytest

from scheduler.device import Device
from scheduler.fake_backend import FakeBackend
from scheduler.latency import LatencyFit, LatencyModel
from scheduler.router import DeviceSnapshot, earliest_completion, round_robin, shortest_queue


def test_latency_model_fits_a_line_and_forgets_old_samples() -> None:
    model = LatencyModel(window=4)
    for rows in (1, 64, 256, 1024):
        model.observe(rows, 0.001 + 1e-6 * rows)
    assert model.fit.fixed_seconds == pytest.approx(0.001, rel=1e-6)
    assert model.fit.seconds_per_row == pytest.approx(1e-6, rel=1e-6)
    for rows in (1, 64, 256, 1024):  # the device got slower: the window holds only new samples
        model.observe(rows, 0.002 + 2e-6 * rows)
    assert model.predict(1000) == pytest.approx(0.002 + 2e-6 * 1000, rel=1e-6)
    assert model.samples == 4


def test_latency_model_stays_positive_on_noise() -> None:
    model = LatencyModel()
    model.observe(100, 0.010)
    assert model.predict(200) == pytest.approx(0.020)  # one size: all cost is per row
    model.observe(200, 0.005)  # slower for fewer rows: noise
    assert model.fit.seconds_per_row == 0 and model.predict(10) > 0


def test_latency_model_never_predicts_faster_than_the_fastest_recent_batch() -> None:
    model = LatencyModel(window=3)
    model.observe(100, 0.0001)
    model.observe(1000, 0.0020)  # a line through these has a negative intercept: clamped to 0
    assert model.fit.fixed_seconds == 0
    assert model.predict(1) == pytest.approx(0.0001)  # not 2 microseconds
    for _ in range(3):  # the fast sample leaves the window: the floor follows
        model.observe(1000, 0.0020)
    assert model.fit.floor_seconds == pytest.approx(0.0020)


def device(name: str, fixed: float, per_row: float, in_flight: int = 0, backlog: float = 0.0,
           slots: int = 1) -> DeviceSnapshot:  # fmt: skip
    running = (backlog,) * min(in_flight, slots) if in_flight else ()
    waiting = (backlog,) * max(0, in_flight - slots)
    fit = LatencyFit(fixed, per_row)
    return DeviceSnapshot(name, fit, in_flight, slots, running, waiting, 2 * slots)


def test_predicted_start_schedules_waiting_batches_on_the_first_free_slot() -> None:
    snapshot = DeviceSnapshot("gpu", LatencyFit(0, 0), 4, 2, (0.3, 0.1), (0.5, 0.2), 6)
    # Slots free at 0.1 and 0.3; the waiting 0.5 takes 0.1 -> 0.6, the 0.2 takes 0.3 -> 0.5.
    assert snapshot.predicted_start() == pytest.approx(0.5)
    idle = DeviceSnapshot("gpu", LatencyFit(0.001, 0), 1, 2, (0.3,), (), 4)
    assert idle.predicted_finish(10) == pytest.approx(0.001)  # a slot is free now


def test_earliest_completion_sends_small_batches_to_cpu_and_large_ones_to_gpu() -> None:
    cpu = device("cpu", fixed=0.0001, per_row=1e-5)
    gpu = device("gpu", fixed=0.002, per_row=1e-7)
    assert earliest_completion([cpu, gpu], rows=10) == 0
    assert earliest_completion([cpu, gpu], rows=4096) == 1


def test_earliest_completion_counts_the_backlog() -> None:
    busy_gpu = device("gpu", 0.002, 1e-7, in_flight=1, backlog=0.5)
    cpu = device("cpu", 0.0001, 1e-5)
    assert earliest_completion([cpu, busy_gpu], rows=4096) == 0
    full = device("gpu", 0.0, 0.0, in_flight=2, backlog=0.0)  # not accepting more work
    assert earliest_completion([cpu, full], rows=4096) == 0


def test_shortest_queue_and_round_robin() -> None:
    a, b = device("a", 0, 0, in_flight=2), device("b", 0, 0, in_flight=1)
    assert shortest_queue([a, b], 1) == 1
    choose = round_robin()
    assert [choose([a, b], 1) for _ in range(4)] == [0, 1, 0, 1]


class OneRunStalled(FakeBackend):
    """The FAKE backend (a test double), 1 ms a row, with its fourth run stalled 0.3 s as a run
    the host preempts would be."""

    def __init__(self) -> None:
        super().__init__("cpu", seconds_per_row=0.001)
        self.runs = 0

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.runs += 1
        if self.runs == 4:  # size 1: a warm run, then its three timed runs, the last stalled
            threading.Event().wait(0.3)
        return super().run(inputs)


def test_a_devices_warm_up_speed_leaves_a_stalled_run_out() -> None:
    device = Device(OneRunStalled(), parallel_batches=1)
    try:
        speed = device.warm_up({"x": np.ones((8, 2), np.float32)}, (1, 8))
    finally:
        device.close()
    # Each size's fastest of three runs: about 1 + 8 ms. Averaged (the latency model's fit), the
    # stall would add 0.1 s and could make a faster runtime lose the choice at start-up.
    assert 0.009 <= speed < 0.009 + 0.05
    assert device.latency.predict(1) > 0.05  # the fit still saw it: it predicts, it does not pick

"""A deterministic simulation of routing policies: the real Scheduler (batcher, router, latency
models) on a virtual clock, with simulated devices of given latency curves.

`python -m scheduler.simulation` prints p50/p99 latency and throughput of each policy under rising
load. The event loop's clock is virtual: when nothing is ready it jumps to the next timer instead
of sleeping, so a minute of traffic simulates in a second, identically on every run.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from scheduler.backend import Inputs, Outputs
from scheduler.device import Device
from scheduler.fake_backend import FakeBackend
from scheduler.router import Policy, make_router
from scheduler.scheduler import BatchingConfig, Scheduler

POLICIES: tuple[Policy, ...] = ("earliest-completion", "shortest-queue", "round-robin")
LOADS = (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)


class _VirtualSelector(selectors.SelectSelector):
    """Never blocks: a wait of `timeout` seconds advances the loop's virtual clock instead."""

    def __init__(self, loop_holder: list[VirtualClockLoop]) -> None:
        super().__init__()
        self._loop_holder = loop_holder

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            raise RuntimeError("simulation deadlock: nothing is scheduled")
        if timeout > 0:
            self._loop_holder[0].advance(timeout)
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        holder: list[VirtualClockLoop] = []
        super().__init__(_VirtualSelector(holder))
        holder.append(self)
        self._now = 0.0

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds


@dataclass(frozen=True)
class DeviceCurve:
    name: str
    fixed_seconds: float
    seconds_per_row: float
    parallel_batches: int


class SimulatedDevice(Device):
    """A Device whose batches take `curve` seconds of virtual time (the real bookkeeping)."""

    def __init__(self, curve: DeviceCurve, clock: Callable[[], float]) -> None:
        super().__init__(FakeBackend(curve.name), curve.parallel_batches, clock=clock)
        self.curve = curve

    async def execute(self, inputs: Inputs, rows: int) -> tuple[Outputs, float]:
        seconds = self.curve.fixed_seconds + self.curve.seconds_per_row * rows
        await asyncio.sleep(seconds)
        return {"score": np.zeros(rows, dtype=np.float32)}, seconds


# A GPU with a high fixed cost and a low per-row cost next to a CPU (figures of the kind the
# build measures: CPU ~0.1 ms + 0.3 us/row; a GPU launch ~1 ms, then ~20 ns/row).
DEFAULT_DEVICES = (
    DeviceCurve("cpu", fixed_seconds=0.0001, seconds_per_row=3e-7, parallel_batches=1),
    DeviceCurve("gpu", fixed_seconds=0.001, seconds_per_row=2e-8, parallel_batches=2),
)


@dataclass(frozen=True)
class Outcome:
    policy: str
    offered_rows_per_second: float
    throughput_rows_per_second: float
    p50_ms: float
    p99_ms: float
    refused: int


async def _drive(
    policy: Policy,
    devices: tuple[DeviceCurve, ...],
    rate: float,
    requests: int,
    rows: int,
    seed: int,
    window_seconds: float,
    elastic: bool,
) -> Outcome:
    loop = asyncio.get_running_loop()
    sim_devices = [SimulatedDevice(c, loop.time) for c in devices]
    for device in sim_devices:  # seed the latency models as warm-up would
        for size in (1, 64, 256, 1024):
            device.latency.observe(
                size, device.curve.fixed_seconds + device.curve.seconds_per_row * size
            )
    config = BatchingConfig(
        max_batch_rows=1024, max_queue_delay_seconds=window_seconds, max_queue_rows=200_000,
        elastic=elastic,
    )  # fmt: skip
    scheduler = Scheduler(sim_devices, make_router(policy), config, clock=loop.time)
    scheduler.start()
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, requests)
    inputs = {"x": np.zeros((rows, 1), dtype=np.float32)}
    latencies: list[float] = []
    refused = 0

    async def one() -> None:
        nonlocal refused
        started = loop.time()
        try:
            await scheduler.submit(inputs)
        except Exception:
            refused += 1
            return
        latencies.append(loop.time() - started)

    tasks = []
    begin = loop.time()
    for gap in gaps:
        await asyncio.sleep(float(gap))
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - begin
    await scheduler.stop()
    p50, p99 = np.percentile(latencies, [50, 99]) if latencies else (float("nan"),) * 2
    return Outcome(
        policy, rate * rows, len(latencies) * rows / elapsed, p50 * 1e3, p99 * 1e3, refused
    )


def simulate(
    policy: Policy,
    offered_rows_per_second: float,
    devices: tuple[DeviceCurve, ...] = DEFAULT_DEVICES,
    requests: int = 4000,
    rows_per_request: int = 100,
    seed: int = 0,
    window_seconds: float = 0.0005,
    elastic: bool = True,
) -> Outcome:
    loop = VirtualClockLoop()
    try:
        rate = offered_rows_per_second / rows_per_request
        return loop.run_until_complete(
            _drive(policy, devices, rate, requests, rows_per_request, seed, window_seconds, elastic)
        )
    finally:
        loop.close()


def capacity(devices: tuple[DeviceCurve, ...], batch_rows: int = 1024) -> float:
    """Rows per second all devices together sustain at full batches."""
    return sum(
        d.parallel_batches * batch_rows / (d.fixed_seconds + d.seconds_per_row * batch_rows)
        for d in devices
    )


def compare_policies() -> None:
    """The routing policies side by side, light to heavy load."""
    total = capacity(DEFAULT_DEVICES)
    curves = "; ".join(
        f"{d.name} {d.fixed_seconds * 1e3:g} ms + {d.seconds_per_row * 1e6:g} us/row, "
        f"{d.parallel_batches} at once"
        for d in DEFAULT_DEVICES
    )
    print(f"Devices: {curves}. Capacity at 1024-row batches: {total:,.0f} rows/s.")
    print("Requests of 100 rows, Poisson arrivals, 4,000 per cell, virtual clock.")
    header = f"{'load':>6} {'policy':<20} {'offered rows/s':>15} {'achieved rows/s':>16}"
    print(f"{header} {'p50 ms':>8} {'p99 ms':>8}")
    for load in LOADS:
        for policy in POLICIES:
            o = simulate(policy, load * total)
            rates = f"{o.offered_rows_per_second:>15,.0f} {o.throughput_rows_per_second:>16,.0f}"
            print(f"{load:>6.0%} {policy:<20} {rates} {o.p50_ms:>8.3f} {o.p99_ms:>8.3f}")


WINDOWS_MS = (0.0, 0.25, 0.5, 1.0, 2.0)


def compare_windows() -> None:
    """Fixed and elastic batching windows under earliest-completion routing, light to heavy."""
    total = capacity(DEFAULT_DEVICES)
    print(f"{'load':>6} {'window':>16} {'p50 ms':>8} {'p99 ms':>8} {'achieved rows/s':>16}")
    for load in (0.1, 0.5, 0.9):
        for elastic in (False, True):
            for window in WINDOWS_MS:
                o = simulate("earliest-completion", load * total, window_seconds=window / 1000,
                             elastic=elastic)  # fmt: skip
                name = f"{'elastic' if elastic else 'fixed'} {window:.2f} ms"
                print(f"{load:>6.0%} {name:>16} {o.p50_ms:>8.3f} {o.p99_ms:>8.3f} "
                      f"{o.throughput_rows_per_second:>16,.0f}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m scheduler.simulation", description=__doc__)
    parser.add_argument(
        "--windows", action="store_true", help="compare batching windows instead of routing"
    )
    args = parser.parse_args(argv)
    compare_windows() if args.windows else compare_policies()
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())

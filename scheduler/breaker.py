"""The circuit breaker of one device: a device whose batch fails or stalls is tripped out of
routing; after its cool-down a one-row probe must succeed to bring it back, else it waits another
cool-down. The state and its decisions live here; `probe_tripped` runs the probes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

log = logging.getLogger(__name__)


class CircuitBreaker:
    def __init__(self, name: str, cool_down_seconds: float = 5.0) -> None:
        self.name = name
        self.cool_down_seconds = cool_down_seconds
        self.closed = True  # the device is routed
        self.open_until = 0.0
        self.failures = 0
        self.on_trip: Callable[[], None] = lambda: None  # wakes the prober

    def trip(self, now: float, reason: str) -> None:
        """Open: no batches are routed to the device until a probe succeeds after the cool-down."""
        self.failures += 1
        if self.closed:
            log.warning(
                "device %s out of routing for %.1f s: %s", self.name, self.cool_down_seconds, reason
            )
        self.closed = False
        self.open_until = now + self.cool_down_seconds
        self.on_trip()

    def due_for_probe(self, now: float) -> bool:
        return not self.closed and now >= self.open_until

    def probe_failed(self, now: float) -> None:
        self.open_until = now + self.cool_down_seconds

    def close(self) -> None:
        log.warning("device %s is back in routing", self.name)
        self.closed = True


class Probed(Protocol):
    breaker: CircuitBreaker

    async def probe(self) -> bool: ...


async def probe_tripped(devices: Sequence[Probed], clock: Callable[[], float],
                        on_recovered: Callable[[], None]) -> None:  # fmt: skip
    """Probe each device whose cool-down has passed; close the breakers of those that answer."""
    for device in devices:
        breaker = device.breaker
        if not breaker.due_for_probe(clock()):
            continue
        if await device.probe():
            breaker.close()
            on_recovered()
        else:
            breaker.probe_failed(clock())


async def probe_loop(
    devices: Sequence[Probed], interval_seconds: float, clock: Callable[[], float],
    on_recovered: Callable[[], None],
) -> None:  # fmt: skip
    """Probe tripped devices every `interval_seconds`; while none is tripped, sleep until one is
    (an idle server's wake-ups cost CPU that light load pays per request)."""
    tripped = asyncio.Event()
    for device in devices:
        device.breaker.on_trip = tripped.set
    while True:
        if all(device.breaker.closed for device in devices):
            tripped.clear()
            await tripped.wait()
        await asyncio.sleep(interval_seconds)
        await probe_tripped(devices, clock, on_recovered)

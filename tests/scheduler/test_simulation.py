"""The routing simulation: the real Scheduler on a virtual clock with simulated devices."""

from __future__ import annotations

import pytest

from scheduler.simulation import DEFAULT_DEVICES, capacity, simulate

pytestmark = pytest.mark.timeout(60)


def test_simulation_is_deterministic() -> None:
    load = 0.5 * capacity(DEFAULT_DEVICES)
    assert simulate("earliest-completion", load, requests=500) == simulate(
        "earliest-completion", load, requests=500
    )


def test_light_load_is_served_without_queueing() -> None:
    outcome = simulate("earliest-completion", 0.05 * capacity(DEFAULT_DEVICES), requests=300)
    assert outcome.refused == 0
    # One 100-row batch on the CPU: 0.1 ms + 30 us, plus at most the 0.5 ms batching window.
    assert outcome.p50_ms < 0.7


def test_earliest_completion_beats_round_robin_and_has_the_lowest_median_at_full_load() -> None:
    load = capacity(DEFAULT_DEVICES)
    earliest = simulate("earliest-completion", load, requests=3000)
    shortest = simulate("shortest-queue", load, requests=3000)
    robin = simulate("round-robin", load, requests=3000)
    assert earliest.throughput_rows_per_second > robin.throughput_rows_per_second
    assert earliest.p99_ms < robin.p99_ms / 2
    assert earliest.p50_ms < shortest.p50_ms
    # Not asserted: its p99 against shortest-queue, which it does not beat here (docs/design.md).

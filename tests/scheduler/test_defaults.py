"""The scheduler's parts are unit-tested on their own, so their constructors keep defaults; the
server always passes its settings. The two sets must not drift: each constructor default is the
schema's (`settings.toml` documents the schema's, and the server runs on those)."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import pytest

from config.settings import Settings
from scheduler.breaker import CircuitBreaker
from scheduler.device import Device, StallPolicy
from scheduler.latency import LatencyModel
from scheduler.scheduler import BatchingConfig

SCHEMA = Settings()


def default_of(part: Callable[..., Any], name: str) -> Any:
    if dataclasses.is_dataclass(part):
        return next(f.default for f in dataclasses.fields(part) if f.name == name)
    return inspect.signature(part).parameters[name].default


@pytest.mark.parametrize(
    ("part", "name", "schema"),
    [
        (BatchingConfig, "elastic", SCHEMA.batching.elastic),
        (BatchingConfig, "low_priority_deadline_fraction",
         SCHEMA.admission.low_priority_deadline_fraction),
        (BatchingConfig, "probe_interval_seconds", SCHEMA.faults.probe_interval_seconds),
        (BatchingConfig, "saturation_wait_seconds",
         SCHEMA.load_balancing.saturation_wait_ms / 1000),
        (StallPolicy, "multiple", SCHEMA.faults.stall_multiple),
        (StallPolicy, "floor_seconds", SCHEMA.faults.stall_floor_ms / 1000),
        (Device, "latency_window", SCHEMA.routing.latency_window_batches),
        (Device, "cool_down_seconds", SCHEMA.faults.cool_down_seconds),
        (LatencyModel, "window", SCHEMA.routing.latency_window_batches),
        (CircuitBreaker, "cool_down_seconds", SCHEMA.faults.cool_down_seconds),
    ],
)  # fmt: skip
def test_each_constructor_default_is_the_schemas(
    part: Callable[..., Any], name: str, schema: object
) -> None:
    assert default_of(part, name) == schema, f"{part.__name__}.{name}"

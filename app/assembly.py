"""The process models, assembled once: which `Models` serve the data plane (sessions in this
process, or an engine process's, seen from an HTTP worker). The entry point (`app.__main__`) picks
one and hands the plane to the transports (`app.serve`) or to the engine (`app.workers.engine`);
tests and embedding applications call them directly. No web framework is imported here."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Histogram

from app.dataplane.admission import Admission
from app.dataplane.catalog import Models
from app.dataplane.metrics import load_failure_counter, request_latency
from app.dataplane.plane import DataPlane
from app.dataplane.registry import ModelRegistry, OpenedModel
from config.settings import Settings
from scheduler.cpu_budget import CpuBudget, this_process
from scheduler.metrics import SchedulerMetrics

log = logging.getLogger(__name__)


@functools.cache
def cpu_budget() -> CpuBudget:
    """The cores this process may use, read once."""
    return this_process()


def runtime_cores(settings: Settings) -> int:
    """The cores the runtimes of the process that owns the sessions may use: all of this
    process's, less one per HTTP worker where an engine process serves workers (each worker's
    event loop keeps a core)."""
    cores = cpu_budget().cores
    server = settings.server
    if server.engine != "per_worker" and (server.workers > 1 or server.engine == "process"):
        cores = max(1, cores - server.workers)
    return cores


@dataclass(frozen=True)
class Assembled:
    plane: DataPlane
    registry: CollectorRegistry  # this process's metrics
    latency: Histogram  # request latency, every transport's


def assemble(settings: Settings, models: Callable[[SchedulerMetrics, CollectorRegistry], Models],
             registry: CollectorRegistry | None = None) -> Assembled:  # fmt: skip
    registry = registry or CollectorRegistry()
    prefix = settings.metrics.prefix
    scheduler_metrics = SchedulerMetrics(registry, prefix)
    refused = scheduler_metrics.refused.labels(reason="in_flight")
    admission = Admission(settings.admission, on_refusal=refused.inc)
    plane = DataPlane(settings, models(scheduler_metrics, registry), admission)
    return Assembled(plane, registry, request_latency(registry, prefix))


def in_process(settings: Settings, checked: Sequence[OpenedModel] = (),
               registry: CollectorRegistry | None = None) -> Assembled:  # fmt: skip
    """The sessions in this process (one process, or the engine process)."""
    cores = runtime_cores(settings)
    log.info("%s; the runtimes' threads fitted to %d", cpu_budget().describe(), cores)

    def models(metrics: SchedulerMetrics, registry: CollectorRegistry) -> Models:
        failures = load_failure_counter(registry, settings.metrics.prefix)
        return ModelRegistry(settings, metrics, cores, failures, checked)

    return assemble(settings, models, registry)


def through_engine(settings: Settings, socket_path: Path,
                   checked: Sequence[OpenedModel] = ()) -> Assembled:  # fmt: skip
    """An HTTP worker: its requests scored by the engine process on `socket_path`."""
    from app.workers.link import EngineLink, EngineModels

    def models(metrics: SchedulerMetrics, registry: CollectorRegistry) -> Models:
        return EngineModels(settings, EngineLink(settings, socket_path), checked)

    return assemble(settings, models)

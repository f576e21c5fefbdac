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
from app.dataplane.features import RedisFeatures
from app.dataplane.metrics import load_failure_counter, request_latency, served_variant_gauge
from app.dataplane.plane import DataPlane
from app.dataplane.registry import ModelRegistry, OpenedModel
from app.dataplane.shadow import ShadowMetrics
from app.workers.supervisor import worker_count
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
    event loop keeps a core), or its share where each worker is a whole server."""
    cores = cpu_budget().cores
    server = settings.server
    if server.engine == "per_worker" and server.workers > 1:
        cores = max(1, cores // server.workers)
    elif server.workers > 1 or server.engine == "process":
        cores = max(1, cores - server.workers)
    return cores


def auto_process_model(cores: int, gpu: bool, reloads: bool) -> tuple[int, str]:
    """`[server] workers = 0`: (workers, engine) for a process of `cores` cores. One process on one
    or two cores (a second process would take a core from the only one serving), or while models
    reload (start-up loading only with workers). Beyond, a worker per core (at most 16): with a
    GPU, feeding one engine (one CUDA context, batches across every worker's requests); on CPUs
    alone, each a whole server, since one engine spends a few hundred microseconds of CPU per
    request and would cap the server well below what independent servers reach."""
    if cores <= 2 or reloads:
        return 1, "auto"
    return worker_count(0, cores), "process" if gpu else "per_worker"


def gpu_available(settings: Settings) -> bool:
    """A GPU device is configured and ONNX Runtime has its CUDA provider."""
    if not any(d.backend == "onnxruntime-gpu" for d in settings.devices):
        return False
    import onnxruntime  # lazily: only where the choice depends on it

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def with_process_model(settings: Settings) -> Settings:
    """The settings with `[server] workers = 0` resolved for this host: by `auto_process_model`
    with `engine = "auto"`, else a worker per core (at most 16) in the engine mode set."""
    server = settings.server
    if server.workers:
        return settings
    cores = cpu_budget().cores
    if server.engine == "auto":
        reloads = settings.model_control.mode != "none"
        gpu = cores > 2 and gpu_available(settings)
        workers, engine = auto_process_model(cores, gpu, reloads)
    else:
        workers, engine = worker_count(0, cores), server.engine
    log.info("process model for %d cores: %s", cores,
             "one process" if workers == 1 else f"{workers} workers, engine {engine}")  # fmt: skip
    chosen = server.model_copy(update={"workers": workers, "engine": engine})
    return settings.model_copy(update={"server": chosen})


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
    features = None
    if settings.features.source == "redis":
        features = RedisFeatures(settings.features, registry, prefix)
    plane = DataPlane(settings, models(scheduler_metrics, registry), admission, features)
    return Assembled(plane, registry, request_latency(registry, prefix))


def in_process(settings: Settings, checked: Sequence[OpenedModel] = (),
               registry: CollectorRegistry | None = None) -> Assembled:  # fmt: skip
    """The sessions in this process (one process, or the engine process)."""
    cores = runtime_cores(settings)
    log.info("%s; the runtimes' threads fitted to %d", cpu_budget().describe(), cores)

    def models(metrics: SchedulerMetrics, registry: CollectorRegistry) -> Models:
        failures = load_failure_counter(registry, settings.metrics.prefix)
        shadows = ShadowMetrics(registry, settings.metrics.prefix)
        variants = served_variant_gauge(registry, settings.metrics.prefix)
        return ModelRegistry(settings, metrics, cores, failures, checked, shadows, variants)

    return assemble(settings, models, registry)


def through_engine(settings: Settings, socket_path: Path,
                   checked: Sequence[OpenedModel] = ()) -> Assembled:  # fmt: skip
    """An HTTP worker: its requests scored by the engine process on `socket_path`."""
    from app.workers.link import EngineLink, EngineModels

    def models(metrics: SchedulerMetrics, registry: CollectorRegistry) -> Models:
        return EngineModels(settings, EngineLink(settings, socket_path), checked)

    return assemble(settings, models)

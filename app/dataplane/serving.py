"""What the data plane serves of one model version: its signature and files, the scoring behind it
(`Scoring`: the scheduler over its devices in this process, or the engine's, seen from an HTTP
worker), the variant each device runs and why, and its ranker for /v1/rank."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.dataplane.devices import (
    fastest_device,
    inference_threads,
    plan_devices,
    timed_candidates,
    variant_reason,
    warmup_inputs,
)
from app.dataplane.ranking import Ranker
from app.dataplane.shadow import Shadowed, ShadowMetrics, start_shadow
from config.settings import Settings
from models.artifacts.repository import ModelVersion
from models.artifacts.servable import ANOTHER_CPU, ServableVersion, VariantFile
from scheduler.batch import Inputs, Scored
from scheduler.device import Device
from scheduler.errors import DeviceUnavailable
from scheduler.load import LoadReport
from scheduler.metrics import ModelMetrics, SchedulerMetrics
from scheduler.router import make_router
from scheduler.scheduler import HIGH, BatchingConfig, Scheduler
from scheduler.served import Served
from scheduler.settings import DeviceSettings

log = logging.getLogger(__name__)


class DeviceView(Protocol):
    """A device as the data plane reports it."""

    @property
    def name(self) -> str: ...
    @property
    def parallel_batches(self) -> int: ...
    @property
    def healthy(self) -> bool: ...
    def close(self) -> None: ...


class Scoring(Protocol):
    """What scores a version's requests: `scheduler.Scheduler` in this process, or
    `app.workers.link.RemoteScheduler` in an HTTP worker (the engine process's scheduler). The
    data plane and every transport see only this."""

    @property
    def devices(self) -> Sequence[DeviceView]: ...
    @property
    def batching(self) -> BatchingConfig: ...
    @property
    def running(self) -> bool: ...
    @property
    def served(self) -> Served: ...
    @property
    def metrics(self) -> ModelMetrics | None: ...
    def load(self) -> LoadReport: ...
    def submit_nowait(self, inputs: Inputs, timeout_seconds: float | None = None,
                      priority: int = HIGH) -> asyncio.Future[Scored]: ...  # fmt: skip
    async def drain(self, limit_seconds: float) -> None: ...
    async def stop(self) -> None: ...


class ShadowReport(Protocol):
    """A shadow as the data plane reports it (`app.dataplane.shadow.Shadow` in this process)."""

    def document(self) -> dict[str, Any]: ...


@dataclass
class Serving:
    version: ServableVersion
    scheduler: Scoring
    variants: dict[str, VariantFile]  # device name -> the variant it runs
    ranker: Ranker | None  # /v1/rank: a built version, or a plain one with a ranking spec
    ready: bool = False
    reasons: dict[str, str] = field(default_factory=dict)  # device name -> why it runs its variant
    backends: dict[str, str] = field(default_factory=dict)  # device name -> the backend it runs
    threads: dict[str, int] = field(default_factory=dict)  # device name -> its runtime threads
    shadow: ShadowReport | None = None  # a candidate scoring a sample of its requests ([shadow])

    @property
    def built(self) -> ModelVersion | None:
        return self.version.built

    async def close(self) -> None:
        self.ready = False
        await self.scheduler.stop()
        for device in self.scheduler.devices:
            await asyncio.to_thread(device.close)


def ranker_for(version: ServableVersion, settings: Settings) -> Ranker | None:
    """/v1/rank for a built version, or a plain one with a ranking spec; None otherwise."""
    if version.built is not None:
        return Ranker.for_version(version.built, settings.limits)
    return Ranker.for_plain(version, settings.limits)


async def start_serving(
    version: ServableVersion,
    settings: Settings,
    metrics: SchedulerMetrics | None,
    cores: int,
    ranker: Ranker | None,
    slots: Mapping[str, asyncio.Semaphore] | None = None,
    shadow_metrics: ShadowMetrics | None = None,
) -> Serving:
    """Sessions on every device that may run the version, warmed up; raises ValueError when none
    can (or a device's settings name a variant it cannot run). `cores`: what the runtimes of this
    process may use; `slots`: each device's batches in flight, shared by every model on it."""
    devices: list[Device] = []
    variants: dict[str, VariantFile] = {}
    reasons: dict[str, str] = {}
    warmup_rows = settings.routing.warmup_rows if version.batched else (1,)
    sample = warmup_inputs(version, max(warmup_rows))
    options: dict[str, list[tuple[DeviceSettings, VariantFile]]] = {}
    for config, chosen in plan_devices(version, settings):  # an either-CPU device: two entries
        timed = timed_candidates(version, config)
        options.setdefault(config.name, []).extend((config, v) for v in timed or [chosen])
    backends: dict[str, str] = {}
    threads: dict[str, int] = {}
    try:
        for name, candidates in options.items():
            shared = slots.get(name) if slots else None
            try:
                device, config, variant, why = await fastest_device(
                    version, candidates, settings, cores, shared, sample, warmup_rows
                )
            except DeviceUnavailable as exc:
                backend = candidates[0][0].backend
                log.warning("device %s (%s) is not available here: %s", name, backend, exc)
                continue
            if why is None and timed_candidates(version, config):
                why = f"the only servable variant its runtime runs ({ANOTHER_CPU})"
            devices.append(device)
            variants[device.name] = variant
            backends[device.name] = config.backend
            threads[device.name] = inference_threads(config, settings.devices, cores)
            reasons[device.name] = why or variant_reason(version, config)
            fit = device.latency.fit
            log.info(
                "%s version %d on device %s: %s (%s, executes %s; %s); latency %.3f ms + %.2f "
                "us/row", version.model, version.number, device.name, variant.name,
                config.backend, device.backend.execution_precision, reasons[device.name],
                fit.fixed_seconds * 1e3, fit.seconds_per_row * 1e6,
            )  # fmt: skip
    except BaseException:
        for device in devices:
            await asyncio.to_thread(device.close)
        raise
    if not devices:
        raise ValueError(f"{version.model} version {version.number}: no device can serve it")
    batching, own = settings.batching, version.config
    max_rows = own.max_batch_rows or batching.max_batch_rows
    delay_ms = own.max_queue_delay_ms
    delay_ms = batching.max_queue_delay_ms if delay_ms is None else delay_ms
    scheduler = Scheduler(
        devices,
        make_router(settings.routing.policy),
        BatchingConfig(
            max_batch_rows=max_rows if version.batched else 1,
            max_queue_delay_seconds=delay_ms / 1000,
            max_queue_rows=batching.max_queue_rows,
            elastic=batching.elastic,
            low_priority_deadline_fraction=settings.admission.low_priority_deadline_fraction,
            probe_interval_seconds=settings.faults.probe_interval_seconds,
            saturation_wait_seconds=settings.load_balancing.saturation_wait_ms / 1000,
        ),
        metrics.for_model(version.model) if metrics else None,
    )
    scheduler.start()
    try:
        shadow = await start_shadow(version, scheduler, settings, cores, slots, shadow_metrics)
    except BaseException:
        await scheduler.stop()
        for device in devices:
            await asyncio.to_thread(device.close)
        raise
    scoring: Scoring = scheduler if shadow is None else Shadowed(scheduler, shadow)
    return Serving(version, scoring, variants, ranker, ready=True, reasons=reasons,
                   backends=backends, threads=threads, shadow=shadow)  # fmt: skip

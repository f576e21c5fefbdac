"""What the app serves: one validated model version and the scheduler over its devices.

Built at start-up (sessions created and warmed up before readiness turns true), closed at
shutdown. Knows the model; the scheduler below it knows only arrays.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import numpy as np

from app.ranking import Ranker
from config.settings import Settings
from models.repository import ModelVersion, Variant, open_version
from scheduler.backend import Backend, BackendConfig, create_backend
from scheduler.device import Device, StallPolicy
from scheduler.errors import DeviceUnavailable
from scheduler.faults import FaultInjector
from scheduler.metrics import SchedulerMetrics
from scheduler.router import make_router
from scheduler.scheduler import BatchingConfig, Scheduler
from scheduler.settings import DeviceSettings

log = logging.getLogger(__name__)

RUNTIME_OF_BACKEND = {
    "openvino-cpu": "openvino",
    "onnxruntime-cpu": "onnxruntime",
    "onnxruntime-gpu": "onnxruntime",
}
DEVICE_KIND_OF_BACKEND = {"openvino-cpu": "cpu", "onnxruntime-cpu": "cpu", "onnxruntime-gpu": "gpu"}


@dataclass
class Serving:
    version: ModelVersion
    scheduler: Scheduler
    variants: dict[str, Variant]  # device name -> the variant it runs
    ranker: Ranker
    ready: bool = False
    stats: dict[str, float] = field(default_factory=dict)

    async def close(self) -> None:
        self.ready = False
        await self.scheduler.stop()
        for device in self.scheduler.devices:
            await asyncio.to_thread(device.close)


def choose_variant(version: ModelVersion, device: DeviceSettings) -> Variant:
    manifest = version.manifest
    kind = DEVICE_KIND_OF_BACKEND[device.backend]
    name = manifest.default_variants[kind] if device.variant == "default" else device.variant  # type: ignore[index]
    try:
        variant = manifest.variant(name)
    except KeyError:
        raise ValueError(
            f"devices.{device.name}.variant: no variant {name!r} in the manifest"
        ) from None
    runtime = RUNTIME_OF_BACKEND[device.backend]
    if runtime not in variant.runtimes:
        raise ValueError(
            f"devices.{device.name}.variant: {name!r} is not served by {runtime} "
            f"(it runs on {', '.join(variant.runtimes)})"
        )
    if not variant.servable:
        raise ValueError(f"devices.{device.name}.variant: {name!r} failed the gate: {variant.gate}")
    return variant


def backend_config(version: ModelVersion, variant: Variant, threads: int = 0, streams: int = 1,
                   ) -> BackendConfig:  # fmt: skip
    # An FP32 ONNX file runs at FP32 in OpenVINO too (its CPU plugin would pick BF16 on its own).
    hint = "f32" if variant.precision == "fp32" and variant.format == "onnx" else None
    return BackendConfig(version.file(variant.file), threads, streams, hint)


def create_device(
    version: ModelVersion, config: DeviceSettings, settings: Settings
) -> tuple[Device, Variant]:
    variant = choose_variant(version, config)
    backend: Backend = create_backend(
        config.backend,
        config.name,
        backend_config(version, variant, config.threads, config.streams),
    )
    if settings.faults.admin_enabled:
        backend = FaultInjector(backend)
    backend.load()
    device = Device(
        backend,
        config.parallel_batches,
        settings.routing.latency_window_batches,
        settings.faults.batch_timeout_ms / 1000,
        StallPolicy(settings.faults.stall_multiple, settings.faults.stall_floor_ms / 1000),
        settings.faults.cool_down_seconds,
    )
    return device, variant


def example_inputs(version: ModelVersion, rows: int) -> dict[str, np.ndarray]:
    """`rows` real input rows (test pairs, repeated as needed): warm-up batches are timed on
    them, and GET /v1/examples hands them to load generators."""
    split = version.load_test_split()
    repeat = -(-rows // len(split.labels))
    users = np.tile(split.user_rows, repeat)[:rows]
    items = np.tile(split.item_rows, repeat)[:rows]
    return version.tables.assemble(users, items)


async def start_serving(settings: Settings, metrics: SchedulerMetrics) -> Serving:
    model = settings.model
    version = await asyncio.to_thread(open_version, model.repository, model.name, model.version)
    devices: list[Device] = []
    variants: dict[str, Variant] = {}
    warmup_rows = settings.routing.warmup_rows
    sample = example_inputs(version, max(warmup_rows))
    for config in settings.devices:
        try:
            device, variant = await asyncio.to_thread(create_device, version, config, settings)
        except DeviceUnavailable as exc:
            log.warning(
                "device %s (%s) is not available here: %s", config.name, config.backend, exc
            )
            continue
        await asyncio.to_thread(device.warm_up, sample, warmup_rows)
        fit = device.latency.fit
        log.info(
            "device %s ready: %s (%s, executes %s); latency %.3f ms + %.2f us/row",
            device.name, variant.name, config.backend, device.backend.execution_precision,
            fit.fixed_seconds * 1e3, fit.seconds_per_row * 1e6,
        )  # fmt: skip
        devices.append(device)
        variants[device.name] = variant
    if not devices:
        raise RuntimeError("no configured device could be started")
    batching = settings.batching
    scheduler = Scheduler(
        devices,
        make_router(settings.routing.policy),
        BatchingConfig(
            max_batch_rows=batching.max_batch_rows,
            max_queue_delay_seconds=batching.max_queue_delay_ms / 1000,
            max_queue_rows=batching.max_queue_rows,
            elastic=batching.elastic,
            low_priority_deadline_fraction=settings.admission.low_priority_deadline_fraction,
            probe_interval_seconds=settings.faults.probe_interval_seconds,
            saturation_wait_seconds=settings.load_balancing.saturation_wait_ms / 1000,
        ),
        metrics,
    )
    scheduler.start()
    ranker = Ranker.for_version(version, settings.limits)
    return Serving(version, scheduler, variants, ranker, ready=True)

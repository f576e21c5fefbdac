"""What the app serves of one model version: its devices (sessions created and warmed up before
it turns ready) and the scheduler over them. Knows the model; the scheduler below it knows only
arrays. `app.registry` holds one per version served.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from app.ranking import Ranker
from app.v2_codec import DTYPES
from config.settings import Settings
from models.model_config import CONFIG_FILE
from models.repository import ModelVersion
from models.servable import ANOTHER_CPU, AS_EXPORTED, ServableVersion, VariantFile
from scheduler.backend import Backend, BackendConfig, create_backend
from scheduler.cpu_budget import CpuBudget, fitted_threads, this_process
from scheduler.device import Device, StallPolicy
from scheduler.errors import DeviceUnavailable
from scheduler.faults import FaultInjector
from scheduler.metrics import SchedulerMetrics
from scheduler.router import make_router
from scheduler.scheduler import BatchingConfig, Scheduler
from scheduler.settings import DeviceSettings

log = logging.getLogger(__name__)


@functools.cache
def cpu_budget() -> CpuBudget:
    """The cores this process may use, read once."""
    return this_process()


def runtime_cores(settings: Settings) -> int:
    """The cores the runtimes may use: this process's, less one per HTTP worker where an engine
    process serves workers (each worker's event loop keeps a core)."""
    cores = cpu_budget().cores
    server = settings.server
    if server.engine != "per_worker" and (server.workers > 1 or server.engine == "process"):
        cores = max(1, cores - server.workers)
    return cores


RUNTIME_OF_BACKEND = {
    "openvino-cpu": "openvino",
    "onnxruntime-cpu": "onnxruntime",
    "onnxruntime-gpu": "onnxruntime",
}
DEVICE_KIND_OF_BACKEND = {
    "openvino-cpu": "cpu", "onnxruntime-cpu": "cpu", "onnxruntime-gpu": "gpu", "cpu": "cpu",
}  # fmt: skip
EITHER_CPU = "cpu"  # a device on whichever CPU runtime is faster on each model here
CPU_BACKENDS = ("onnxruntime-cpu", "openvino-cpu")


@dataclass
class Serving:
    version: ServableVersion
    scheduler: Scheduler
    variants: dict[str, VariantFile]  # device name -> the variant it runs
    ranker: Ranker | None  # /v1/rank: a built version, or a plain one with a ranking spec
    ready: bool = False
    reasons: dict[str, str] = field(default_factory=dict)  # device name -> why it runs its variant
    stats: dict[str, float] = field(default_factory=dict)
    backends: dict[str, str] = field(default_factory=dict)  # device name -> the backend it runs

    @property
    def built(self) -> ModelVersion | None:
        return self.version.built

    async def close(self) -> None:
        self.ready = False
        await self.scheduler.stop()
        for device in self.scheduler.devices:
            await asyncio.to_thread(device.close)


class NotServedHere(ValueError):
    """This device cannot run this model (a runtime that does not read its format)."""


def choose_variant(version: ServableVersion, device: DeviceSettings) -> VariantFile:
    """The variant a device runs: the model's config.toml, else the device's setting, else the
    version's default for the device's kind."""
    kind = DEVICE_KIND_OF_BACKEND[device.backend]
    named = version.config.variants.get(device.name) or (
        None if device.variant == "default" else device.variant
    )
    name = (
        named or version.default_variants.get(device.backend) or version.default_variants.get(kind)
    )
    variant = version.variants.get(name or "")
    where = f"{version.model} version {version.number}"
    if variant is None:
        raise ValueError(
            f"devices.{device.name}.variant: {where} has no servable variant {name!r} "
            f"(it has {', '.join(sorted(version.variants))})"
        )
    runtime = RUNTIME_OF_BACKEND[device.backend]
    if runtime not in variant.runtimes:
        message = (
            f"{where}: {variant.name!r} is not run by {runtime} ({', '.join(variant.runtimes)})"
        )
        if named is None:
            raise NotServedHere(message)
        raise ValueError(f"devices.{device.name}.variant: {message}")
    return variant


def variant_reason(version: ServableVersion, device: DeviceSettings) -> str:
    """Why a device runs the variant choose_variant picks (for the log and the model config)."""
    if device.name in version.config.variants:
        return f"{version.path.parent / CONFIG_FILE} names it"
    if device.variant != "default":
        return "the device's variant setting names it"
    kind = DEVICE_KIND_OF_BACKEND[device.backend]
    reasons = version.default_reasons
    return reasons.get(device.backend) or reasons.get(kind) or "the version's only variant"


def backend_config(variant: VariantFile, batched: bool, threads: int = 0, streams: int = 1,
                   ) -> BackendConfig:  # fmt: skip
    # An FP32 ONNX file, and a user's plain file whatever its format, runs at FP32 in OpenVINO
    # too: its CPU plugin would pick BF16 on its own, a precision no gate has scored.
    exact = variant.precision == "fp32" and variant.format == "onnx"
    hint = "f32" if exact or variant.precision == AS_EXPORTED else None
    hint = variant.execution_hint or hint
    return BackendConfig(variant.path, threads, streams, hint, batched)


def inference_threads(device: DeviceSettings, devices: tuple[DeviceSettings, ...],
                      cores: int) -> int:  # fmt: skip
    """A device's runtime threads: its `threads` setting, else fitted to the `cores` this
    process may use, shared by every batch the CPU devices may run at once (a runtime's own
    default counts the host's cores, whatever the affinity or cgroup limit)."""
    if device.threads:
        return device.threads
    at_once = sum(d.parallel_batches for d in devices if DEVICE_KIND_OF_BACKEND[d.backend] == "cpu")
    return fitted_threads(cores, at_once)


def create_device(
    version: ServableVersion,
    config: DeviceSettings,
    variant: VariantFile,
    settings: Settings,
    slots: asyncio.Semaphore | None = None,
) -> Device:
    threads = inference_threads(config, settings.devices, runtime_cores(settings))
    backend: Backend = create_backend(
        config.backend,
        config.name,
        backend_config(variant, version.batched, threads, config.streams),
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
        slots=slots,
    )
    return device


def example_inputs(version: ModelVersion, rows: int) -> dict[str, np.ndarray]:
    """`rows` real input rows (test pairs, repeated as needed) of a built version: warm-up batches
    are timed on them, and GET /v1/examples hands them to load generators."""
    split = version.load_test_split()
    repeat = -(-rows // len(split.labels))
    users = np.tile(split.user_rows, repeat)[:rows]
    items = np.tile(split.item_rows, repeat)[:rows]
    return version.tables.assemble(users, items)


def warmup_inputs(version: ServableVersion, rows: int) -> dict[str, np.ndarray]:
    """Real rows for a built version; for a plain model, zeros of each input's shape (a plain
    model ships no data; zeros exercise every batch shape the batcher will form). An unbatched
    model's request carries a leading axis of one, which its backend takes off."""
    if version.built is not None:
        return example_inputs(version.built, rows)
    inputs = {}
    for spec in version.signature.inputs:
        inner = spec.shape[1:] if version.batched else spec.shape
        shape = (rows if version.batched else 1, *(max(d, 1) for d in inner))
        inputs[spec.name] = np.zeros(shape, dtype=DTYPES[spec.datatype])
    return inputs


def concrete_devices(device: DeviceSettings) -> list[DeviceSettings]:
    """The backends a device may run on: an either-CPU device (`backend = "cpu"`) is both CPU
    runtimes until start-up times them on the model; any other, itself."""
    if device.backend != EITHER_CPU:
        return [device]
    return [device.model_copy(update={"backend": b}) for b in CPU_BACKENDS]


def plan_devices(version: ServableVersion, settings: Settings,
                 ) -> list[tuple[DeviceSettings, VariantFile]]:  # fmt: skip
    """The devices that serve the version and the variant each runs, on a concrete backend (an
    either-CPU device once per CPU runtime that runs the model: start-up keeps the faster). Pure:
    start-up checks a repository with it before any session exists. Raises ValueError naming the
    setting."""
    wanted = version.config.devices
    unknown = set(wanted or ()) - {d.name for d in settings.devices}
    if unknown:
        raise ValueError(
            f"{version.path.parent / CONFIG_FILE}: devices: no device {sorted(unknown)[0]!r} in "
            f"the server's settings (it has {', '.join(d.name for d in settings.devices)})"
        )
    plan = []
    for config in settings.devices:
        if wanted is not None and config.name not in wanted:
            continue
        options, refused = [], []
        for concrete in concrete_devices(config):
            try:
                options.append((concrete, choose_variant(version, concrete)))
            except NotServedHere as exc:
                log.info("device %s (%s) does not serve it: %s", config.name, concrete.backend, exc)
            except ValueError as exc:  # a named variant: an either-CPU device needs one runtime
                if config.backend != EITHER_CPU:
                    raise
                refused.append(exc)
        if refused and not options:
            raise refused[0]
        plan += options
    if not plan:
        raise ValueError(
            f"{version.model} version {version.number}: no configured device runs "
            f"{', '.join(sorted(version.variants))}"
        )
    return plan


def timed_candidates(version: ServableVersion, device: DeviceSettings) -> list[VariantFile]:
    """The variants to time at start-up for a device left to its default where the record's
    speeds come from another CPU: every servable one its runtime runs but those made for GPUs."""
    named = device.name in version.config.variants or device.variant != "default"
    if named or device.backend not in version.timed_defaults:
        return []
    runtime = RUNTIME_OF_BACKEND[device.backend]
    return [v for v in version.variants.values()
            if runtime in v.runtimes and v.device != "gpu"]  # fmt: skip


async def fastest_device(
    version: ServableVersion, candidates: list[tuple[DeviceSettings, VariantFile]],
    settings: Settings, slots: asyncio.Semaphore | None, sample: dict[str, np.ndarray],
    warmup_rows: tuple[int, ...],
) -> tuple[Device, DeviceSettings, VariantFile, str | None]:  # fmt: skip
    """A warmed-up device on the candidate (backend, variant) whose warm-up batches are predicted
    fastest (the others closed), and why it was chosen when there was a choice."""
    timed: list[tuple[float, Device, DeviceSettings, VariantFile]] = []
    try:
        for config, variant in candidates:
            device = await asyncio.to_thread(
                create_device, version, config, variant, settings, slots
            )
            timed.append((0.0, device, config, variant))
            await asyncio.to_thread(device.warm_up, sample, warmup_rows)
            seconds = sum(device.latency.predict(rows) for rows in warmup_rows)
            timed[-1] = (seconds, device, config, variant)
    except BaseException:
        for _, device, _, _ in timed:
            await asyncio.to_thread(device.close)
        raise
    timed.sort(key=lambda entry: entry[0])
    for _, device, _, _ in timed[1:]:
        await asyncio.to_thread(device.close)
    _, device, config, variant = timed[0]
    if len(timed) == 1:
        return device, config, variant, None
    if len({c.backend for _, _, c, _ in timed}) > 1:
        names = ", ".join(f"{c.backend} {v.name} {s * 1e3:.3f} ms" for s, _, c, v in timed)
        why = (f"{variant_reason(version, config)}; the faster CPU runtime here, timed at "
               f"start-up over the warm-up batches: {names}")  # fmt: skip
        return device, config, variant, why
    names = ", ".join(f"{v.name} {s * 1e3:.3f} ms" for s, _, _, v in timed)
    why = (f"timed at start-up (the record was measured on another CPU): the fastest over the "
           f"warm-up batches of {names}")  # fmt: skip
    return device, config, variant, why


def ranker_for(version: ServableVersion, settings: Settings) -> Ranker | None:
    """/v1/rank for a built version, or a plain one with a ranking spec; None otherwise."""
    if version.built is not None:
        return Ranker.for_version(version.built, settings.limits)
    return Ranker.for_plain(version, settings.limits)


async def start_serving(
    version: ServableVersion,
    settings: Settings,
    metrics: SchedulerMetrics | None,
    slots: Mapping[str, asyncio.Semaphore] | None = None,
) -> Serving:
    """Sessions on every device that may run the version, warmed up; raises ValueError when none
    can (or a device's settings name a variant it cannot run). `slots`: each device's batches
    in flight, shared by every model served on it."""
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
    try:
        for name, candidates in options.items():
            shared = slots.get(name) if slots else None
            try:
                device, config, variant, why = await fastest_device(
                    version, candidates, settings, shared, sample, warmup_rows
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
    ranker = await asyncio.to_thread(ranker_for, version, settings)
    return Serving(version, scheduler, variants, ranker, ready=True, reasons=reasons,
                   backends=backends)  # fmt: skip

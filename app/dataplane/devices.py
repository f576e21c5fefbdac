"""The devices that serve a model version: which device runs which variant and why (pure, so
start-up checks a repository with it before any session exists), and their sessions, created,
warmed up and, for a device that may run either CPU runtime, timed to keep the faster."""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from config.settings import Settings
from models.artifacts.model_config import CONFIG_FILE
from models.artifacts.repository import ModelVersion
from models.artifacts.servable import AS_EXPORTED, ServableVersion, VariantFile
from models.artifacts.signature import NUMPY_DTYPES
from scheduler.backend import Backend, BackendConfig, DeviceKind, create_backend
from scheduler.cpu_budget import fitted_threads
from scheduler.device import Device, StallPolicy
from scheduler.faults import FaultInjector
from scheduler.settings import DeviceSettings

log = logging.getLogger(__name__)

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
    cores: int,
    slots: asyncio.Semaphore | None = None,
) -> Device:
    """A device's session on `variant`, loaded; its runtime threads fitted to `cores`."""
    threads = inference_threads(config, settings.devices, cores)
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
        on_loop=runs_on_loop(backend.device_kind, cores, settings.faults.admin_enabled),
    )
    return device


def runs_on_loop(kind: DeviceKind, cores: int, faults: bool) -> bool:
    """A CPU device runs its batches on the event loop's thread when the process has one core:
    a runtime thread there could not run beside the loop, only cost a hand-off each way. Not
    with fault injection on, whose stalls must not stall the loop."""
    return kind == "cpu" and cores == 1 and not faults


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
        inputs[spec.name] = np.zeros(shape, dtype=NUMPY_DTYPES[spec.datatype])
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
    settings: Settings, cores: int, slots: asyncio.Semaphore | None,
    sample: dict[str, np.ndarray], warmup_rows: tuple[int, ...],
) -> tuple[Device, DeviceSettings, VariantFile, str | None]:  # fmt: skip
    """A warmed-up device on the candidate (backend, variant) that runs the warm-up batches
    fastest (each size's fastest run, summed; the others closed), and why it was chosen when
    there was a choice."""
    timed: list[tuple[float, Device, DeviceSettings, VariantFile]] = []
    try:
        for config, variant in candidates:
            device = await asyncio.to_thread(
                create_device, version, config, variant, settings, cores, slots
            )
            timed.append((0.0, device, config, variant))
            seconds = await asyncio.to_thread(device.warm_up, sample, warmup_rows)
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
               f"start-up (each warm-up batch's fastest run, summed): {names}")  # fmt: skip
        return device, config, variant, why
    names = ", ".join(f"{v.name} {s * 1e3:.3f} ms" for s, _, _, v in timed)
    why = (f"timed at start-up (the record was measured on another CPU): the fastest over the "
           f"warm-up batches (each one's fastest run, summed) of {names}")  # fmt: skip
    return device, config, variant, why

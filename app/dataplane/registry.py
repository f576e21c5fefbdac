"""The models the server serves, by name and version, and their loading, reloading and unloading.

A (re)load builds every version it serves anew off the event loop (sessions created and warmed
up) and swaps them in only once all are ready; requests already queued on a version it replaces
finish there before that version closes. A version that fails to load leaves what served before
serving, and the failure is kept as the model's reason (the log, the index and a metric say why).
Triton's model-control modes: `none` loads the repository at start-up only; `explicit` adds the
repository API's load and unload; `poll` reloads a model when its folder changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import Gauge

from app.dataplane.catalog import LOADING, READY, UNAVAILABLE, UNLOADING, Catalog, ServedModel
from app.dataplane.devices import plan_devices
from app.dataplane.live_record import not_self_accelerated
from app.dataplane.ranking import Ranker
from app.dataplane.self_acceleration import SelfAccelerator
from app.dataplane.serving import Serving, ranker_for, start_serving
from app.dataplane.shadow import (
    Shadow,
    Shadowed,
    ShadowMetrics,
    shadow_device,
    start_candidate,
    version_shadow,
)
from config.settings import Settings
from models.artifacts.model_config import CONFIG_FILE, ModelConfig, read_model_config
from models.artifacts.repository import RepositoryError
from models.artifacts.servable import (
    PLAIN_VARIANT,
    ServableVersion,
    model_names,
    open_servable,
    versions_on_disk,
)
from scheduler.device import Device
from scheduler.errors import UnknownModel
from scheduler.faults import FaultInjector, FaultMode
from scheduler.load import combine
from scheduler.metrics import SchedulerMetrics
from scheduler.scheduler import Scheduler

log = logging.getLogger(__name__)

DRAIN_LIMIT_SECONDS = 30.0  # a replaced version waits at most this for its queued requests


def folder_fingerprint(model_path: Path) -> str:
    """Changes when a version folder, a file in one, or the model's config.toml changes; not
    with a hidden one (self-acceleration's lock and work in progress)."""
    digest = hashlib.sha256()
    files = [model_path / CONFIG_FILE]
    for number in versions_on_disk(model_path):
        folder = model_path / str(number)
        hidden = list(folder.rglob(".*"))
        files += sorted(p for p in folder.rglob("*") if p.is_file()
                        and not any(p == h or h in p.parents for h in hidden))  # fmt: skip
    for path in files:
        if path.is_file():
            stat = path.stat()
            seen = f"{path.relative_to(model_path)}:{stat.st_size}:{stat.st_mtime_ns};"
            digest.update(seen.encode())
    return digest.hexdigest()


class ModelRegistry(Catalog):
    """The models of the process that owns the sessions (one process, or the engine)."""

    def __init__(self, settings: Settings, metrics: SchedulerMetrics | None, cores: int,
                 on_load_failure: Callable[[str], None] = lambda model: None,
                 checked: Sequence[OpenedModel] = (),
                 shadow_metrics: ShadowMetrics | None = None,
                 served_variants: Gauge | None = None) -> None:  # fmt: skip
        """`cores`: what the runtimes of this process may use (the entry point decides)."""
        super().__init__(settings)
        self._shadow_metrics = shadow_metrics
        self._served_variants = served_variants
        self._cores = cores
        self._metrics = metrics
        self._on_load_failure = on_load_failure
        self._lock = asyncio.Lock()  # one load or unload at a time
        self._retiring: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None
        # What check_repository opened at start-up, so start() does not open it again.
        self._checked = {opened.name: opened for opened in checked}
        # One bound per physical device on the batches all models run on it at once.
        self._slots = {d.name: asyncio.Semaphore(d.parallel_batches) for d in settings.devices}

    # -- loading --

    async def start(self) -> None:
        """Load the models named by [model_control] startup_models; a failure raises (start-up
        stops with it)."""
        names = startup_names(self.settings)
        if not names and self.settings.model_control.mode != "explicit":
            log.warning("no model to load in %s (readiness stays false until one is)", self.root)
        for name in names:
            await self.load(name, self._checked.pop(name, None))
        if self.settings.model_control.mode == "poll":
            self._poller = asyncio.create_task(self._poll(), name="repository-poll")

    async def load(self, name: str, opened: OpenedModel | None = None) -> None:
        """(Re)load a model from its folder (or from `opened`, what start-up checked): the
        versions its policy selects, built anew and swapped in together. Raises RepositoryError
        or ValueError saying why; what served before keeps serving then."""
        async with self._lock:
            model = self.models.setdefault(name, ServedModel(name))
            previous_state = model.state
            model.state = LOADING if not model.versions else model.state
            try:
                fingerprint, built = await self._build(name, opened)
            except (RepositoryError, ValueError) as exc:
                model.reason = within(self.root, str(exc))
                model.state = previous_state if model.versions else UNAVAILABLE
                self._on_load_failure(name)
                log.error("loading %s failed: %s", name, model.reason)
                raise type(exc)(model.reason) from None
            replaced = list(model.versions.values())
            model.versions = {s.version.number: s for s in built}
            model.state, model.reason, model.fingerprint = READY, "", fingerprint
            log.info("%s: serving version(s) %s", name, ", ".join(map(str, sorted(model.versions))))
        for serving in replaced:
            self._retire(serving)

    async def _build(self, name: str, opened: OpenedModel | None = None,
                     ) -> tuple[str, list[Serving]]:  # fmt: skip
        if opened is None:
            opened = await asyncio.to_thread(open_model, self.settings, name)
        built: list[Serving] = []
        try:
            for version in opened.versions:
                ranker = await opened.ranker(version, self.settings)
                serving = await start_serving(version, self.settings, self._metrics, self._cores,
                                              ranker, self._slots,
                                              self._shadow_metrics)  # fmt: skip
                built.append(serving)
            await self._shadow_version(name, built)
            for serving in built:
                self._self_accelerate(name, serving)
        except BaseException:
            for serving in built:
                await serving.close()
            raise
        return opened.fingerprint, built

    async def _shadow_version(self, name: str, built: list[Serving]) -> None:
        """[shadow] versions: the candidate version on its own device, shadowing the latest
        other version served."""
        pair = version_shadow(name, [s.version.number for s in built], self.settings)
        if pair is None:
            return
        by_number = {s.version.number: s for s in built}
        live, candidate = by_number[pair[0]], by_number[pair[1]].version
        assert isinstance(live.scheduler, Scheduler)  # version_shadow refused a variant shadow
        config, variant = plan_devices(candidate, self.settings)[0]
        shadow = await start_candidate(candidate, config, variant, f"version {candidate.number}",
                                       live.scheduler, self.settings, self._cores, self._slots,
                                       self._shadow_metrics)  # fmt: skip
        live.scheduler, live.shadow = Shadowed(live.scheduler, shadow), shadow

    def _self_accelerate(self, name: str, serving: Serving) -> None:
        """[self_acceleration]: a plain version with no record but one live traffic gated."""
        version = serving.version
        why_not = not_self_accelerated(version, self.settings, version.record)
        if why_not is not None:
            log.info("%s version %d: not self-accelerated: %s", name, version.number, why_not)
            return
        assert isinstance(serving.scheduler, Scheduler)  # no [shadow] for it: not_self_accelerated

        async def reload() -> None:
            await self.load(name)

        accelerator = SelfAccelerator(
            serving, serving.scheduler, self.settings, self._cores, self._slots,
            self._shadow_metrics, reload,
        )  # fmt: skip
        serving.scheduler, serving.shadow = Shadowed(serving.scheduler, accelerator), accelerator
        accelerator.start()

    async def unload(self, name: str) -> None:
        async with self._lock:
            model = self.models.get(name)
            if model is None or not model.versions:
                raise UnknownModel(f"model {name!r} is not loaded")
            model.state = UNLOADING
            replaced = list(model.versions.values())
            model.versions = {}
            model.state, model.reason = UNAVAILABLE, "unloaded"
        for serving in replaced:
            self._retire(serving, forget=True)
        log.info("%s: unloaded", name)

    def _retire(self, serving: Serving, forget: bool = False) -> None:
        """Close a version no request can reach any more, once its queued requests finished
        (and with `forget`, the model being unloaded, remove its metric series)."""

        async def retire() -> None:
            await serving.scheduler.drain(DRAIN_LIMIT_SECONDS)
            await serving.close()
            metrics = serving.scheduler.metrics
            if forget and metrics is not None and not self.models[metrics.model].versions:
                metrics.forget([d.name for d in serving.scheduler.devices])

        task = asyncio.create_task(retire(), name=f"retire {serving.version.model}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _poll(self) -> None:
        interval = self.settings.model_control.poll_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                await self.poll_once()
            except Exception:  # the next poll tries again; never stop polling
                log.exception("repository poll failed")

    async def poll_once(self) -> None:
        """Reload every model whose folder changed, load new ones, unload removed ones."""
        on_disk = set(await asyncio.to_thread(model_names, self.root))
        for name in sorted(on_disk):
            model = self.models.get(name)
            fingerprint = await asyncio.to_thread(folder_fingerprint, self.root / name)
            if model is None or model.fingerprint != fingerprint:
                with contextlib.suppress(RepositoryError, ValueError):  # the reason is kept
                    await self.load(name)
                self.models[name].fingerprint = fingerprint  # not again until it changes
        for name in sorted(set(self.models) - on_disk):
            if self.models[name].versions:
                await self.unload(name)

    async def set_fault(self, device: str, mode: FaultMode) -> bool:
        """Every served model's session on `device` fails, stalls or perturbs its outputs (they
        share the device); `<device>.shadow`: the shadow candidates' sessions on it."""
        devices = [d for s in self.serving() for d in (*s.scheduler.devices, *shadow_devices(s))]
        found = [
            d.backend for d in devices
            if isinstance(d, Device) and d.name == device and isinstance(d.backend, FaultInjector)
        ]  # fmt: skip
        for backend in found:
            backend.set_mode(mode)
        return bool(found)

    def refresh_metrics(self, headroom_cap: int) -> None:
        """The device and load gauges /metrics reports, as of now (the headroom capped by the
        front end's)."""
        served = self.serving()
        if self._served_variants is not None:
            self._served_variants.clear()  # retired versions drop out
            for serving in served:
                version = serving.version
                for device, variant in serving.variants.items():
                    gated = "source" if variant.name == PLAIN_VARIANT else version.gated_on
                    self._served_variants.labels(version.model, str(version.number), device,
                                                 variant.name, gated).set(1)  # fmt: skip
        for serving in served:
            if serving.scheduler.metrics is not None:
                devices = [d for d in serving.scheduler.devices if isinstance(d, Device)]
                serving.scheduler.metrics.refresh_devices(devices)
        if served and self._metrics is not None:
            report = combine([s.scheduler.load() for s in served])
            capped = min(report.headroom, headroom_cap)
            self._metrics.refresh_load(dataclasses.replace(report, headroom=capped))

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        for serving in self.serving():
            serving.ready = False
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for serving in self.serving():
            await serving.close()
        self.models.clear()


def shadow_devices(serving: Serving) -> list[Device]:
    """The devices of the candidates shadowing a version ([shadow], or self-acceleration's)."""
    shadow = serving.shadow
    if isinstance(shadow, SelfAccelerator):
        return [d for s in shadow.shadows.values() for d in s.candidate.devices]
    return list(shadow.candidate.devices) if isinstance(shadow, Shadow) else []


def versions_to_serve(settings: Settings, name: str, config: ModelConfig, on_disk: list[int],
                      ) -> list[int]:  # fmt: skip
    """The model's version_policy, unless [model] version pins the /v1 model's version."""
    pinned = settings.model.version
    if name == settings.model.name and pinned is not None:
        return [pinned] if pinned in on_disk else []
    return config.version_policy.select(on_disk)


@dataclass(frozen=True)
class OpenedModel:
    """A model's versions as its folder holds them now, checked and ready to start serving."""

    name: str
    fingerprint: str  # of the folder when it was opened
    versions: list[ServableVersion]
    rankers: dict[int, Ranker | None] = field(default_factory=dict)  # by version, when checked

    async def ranker(self, version: ServableVersion, settings: Settings) -> Ranker | None:
        """The version's ranker: the one the check built, else built now (off the loop)."""
        if version.number in self.rankers:
            return self.rankers[version.number]
        return await asyncio.to_thread(ranker_for, version, settings)


def startup_names(settings: Settings) -> list[str]:
    wanted = settings.model_control.startup_models
    return model_names(settings.model.repository) if "*" in wanted else list(wanted)


def open_model(settings: Settings, name: str) -> OpenedModel:
    """Read a model's folder: its config.toml, the versions its policy serves, each checked
    (files, checksums, graph). Raises RepositoryError naming the file."""
    root = settings.model.repository
    model_path = root / name
    if not model_path.is_dir():
        raise RepositoryError(f"{model_path}: no such model folder")
    fingerprint = folder_fingerprint(model_path)
    config = read_model_config(model_path)
    numbers = versions_to_serve(settings, name, config, versions_on_disk(model_path))
    if not numbers:
        raise RepositoryError(f"{model_path}: no version folder its version_policy serves")
    max_rows = settings.batching.max_batch_rows
    versions = [open_servable(root, name, n, config, max_rows) for n in numbers]
    return OpenedModel(name, fingerprint, versions)


def check_repository(settings: Settings, ranking: bool = True) -> list[OpenedModel]:
    """What start-up will load, checked before any session exists: each start-up model's
    config.toml, the versions its policy serves, their files and graphs, the devices that would
    run them and its ranking spec. Raises RepositoryError or ValueError in one line naming the
    file; returns the models opened, for the registry to start from. `ranking` false: a process
    that ranks nothing (the engine, which scores arrays its workers assembled) reads no feature
    tables; a version's ranker is then None."""
    opened = []
    for name in startup_names(settings):
        model_path = settings.model.repository / name
        if not model_path.is_dir():
            raise RepositoryError(f"{model_path}: no such model folder ([model_control] "
                                  "startup_models names it)")  # fmt: skip
        model = open_model(settings, name)
        for version in model.versions:
            plan_devices(version, settings)
            shadow_device(version, settings)
            model.rankers[version.number] = ranker_for(version, settings) if ranking else None
        version_shadow(name, [version.number for version in model.versions], settings)
        opened.append(model)
    return opened


def within(root: Path, message: str) -> str:
    """A message with the repository's own path left out: files named as Triton names them,
    `<model>/<version>/<file>` (the repository's location is the operator's, not a client's)."""
    for prefix in {f"{root}/", f"{root.resolve()}/"}:
        message = message.replace(prefix, "")
    return message

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
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter

from app.serving import Serving, plan_devices, ranker_for, start_serving
from config.settings import Settings
from models.model_config import CONFIG_FILE, ModelConfig, read_model_config
from models.repository import RepositoryError
from models.servable import ServableVersion, model_names, open_servable, versions_on_disk
from scheduler.errors import NotReady, UnknownModel
from scheduler.metrics import SchedulerMetrics

log = logging.getLogger(__name__)

READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"
DRAIN_LIMIT_SECONDS = 30.0  # a replaced version waits at most this for its queued requests


@dataclass
class ServedModel:
    name: str
    versions: dict[int, Serving] = field(default_factory=dict)  # the ones serving now
    state: str = UNAVAILABLE
    reason: str = ""
    fingerprint: str = ""  # of the folder as last loaded (poll mode compares it)

    def latest(self) -> Serving | None:
        ready = [v for n, v in sorted(self.versions.items()) if v.ready]
        return ready[-1] if ready else None


def folder_fingerprint(model_path: Path) -> str:
    """Changes when a version folder, a file in one, or the model's config.toml changes."""
    digest = hashlib.sha256()
    files = [model_path / CONFIG_FILE]
    for number in versions_on_disk(model_path):
        files += sorted(p for p in (model_path / str(number)).rglob("*") if p.is_file())
    for path in files:
        if path.is_file():
            stat = path.stat()
            seen = f"{path.relative_to(model_path)}:{stat.st_size}:{stat.st_mtime_ns};"
            digest.update(seen.encode())
    return digest.hexdigest()


def load_failure_counter(registry: CollectorRegistry, prefix: str) -> Callable[[str], None]:
    """What a registry calls when a model fails to load: a counter by model."""
    failures = Counter(
        f"{prefix}_model_load_failures",
        "Model loads and reloads that failed (what served before kept serving)",
        ["model"], registry=registry,
    )  # fmt: skip
    return lambda name: failures.labels(model=name).inc()


class ModelRegistry:
    def __init__(self, settings: Settings, metrics: SchedulerMetrics | None,
                 on_load_failure: Callable[[str], None] = lambda model: None,
                 checked: Sequence[OpenedModel] = ()) -> None:  # fmt: skip
        self.settings = settings
        self.root = settings.model.repository
        self.models: dict[str, ServedModel] = {}
        self._metrics = metrics
        self._on_load_failure = on_load_failure
        self._lock = asyncio.Lock()  # one load or unload at a time
        self._retiring: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None
        # What check_repository opened at start-up, so start() does not open it again.
        self._checked = {opened.name: opened for opened in checked}
        # One bound per physical device on the batches all models run on it at once.
        self._slots = {d.name: asyncio.Semaphore(d.parallel_batches) for d in settings.devices}

    # -- lookups (no awaits: a route looks up and submits in one step of the event loop) --

    def get(self, name: str, version: str | None = None) -> Serving:
        """The version a request names, or the latest ready one."""
        model = self.models.get(name)
        if model is None or not model.versions:
            known = ", ".join(sorted(n for n, m in self.models.items() if m.versions)) or "none"
            raise UnknownModel(f"model {name!r} is not served here (serving: {known})")
        if version is None:
            serving = model.latest()
            if serving is None:
                raise NotReady(f"model {name!r} has no ready version")
            return serving
        number = int(version) if version.isascii() and version.isdigit() else -1
        serving = model.versions.get(number)
        if serving is None:
            raise UnknownModel(f"model {name!r} has no version {version[:32]!r} served")
        return serving

    def ready(self) -> bool:
        """Every loaded model has a ready version on a healthy device, none saturated; with none
        loaded, only in explicit mode (where an empty server is what was asked for)."""
        loaded = [m for m in self.models.values() if m.versions]
        if not loaded:
            return self.settings.model_control.mode == "explicit"
        for model in loaded:
            serving = model.latest()
            if serving is None or not serving.scheduler.running:
                return False
            scheduler = serving.scheduler
            if not any(d.healthy for d in scheduler.devices) or scheduler.load().saturated:
                return False
        return True

    def config_of(self, name: str) -> ModelConfig:
        """The config.toml of the model's latest ready version (every default if none)."""
        model = self.models.get(name)
        serving = model.latest() if model is not None else None
        return serving.version.config if serving is not None else ModelConfig()

    def serving(self) -> list[Serving]:
        return [s for model in self.models.values() for s in model.versions.values()]

    def index(self) -> list[dict[str, str]]:
        """Triton's repository index: every model on disk or loaded, by version, with its state."""
        try:
            on_disk = set(model_names(self.root))
        except RepositoryError:
            on_disk = set()
        rows = []
        for name in sorted(on_disk | set(self.models)):
            model = self.models.get(name)
            if model is None or not model.versions:
                state = model.state if model is not None else UNAVAILABLE
                rows.append({"name": name, "state": state, "reason": model.reason if model else ""})
                continue
            for number, serving in sorted(model.versions.items()):
                rows.append({
                    "name": name, "version": str(number),
                    "state": READY if serving.ready else UNAVAILABLE, "reason": model.reason,
                })  # fmt: skip
        return rows

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

    async def load(self, name: str, opened: OpenedModel | None = None) -> ServedModel:
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
                model.reason = str(exc)
                model.state = previous_state if model.versions else UNAVAILABLE
                self._on_load_failure(name)
                log.error("loading %s failed: %s", name, exc)
                raise
            replaced = list(model.versions.values())
            model.versions = {s.version.number: s for s in built}
            model.state, model.reason, model.fingerprint = READY, "", fingerprint
            log.info("%s: serving version(s) %s", name, ", ".join(map(str, sorted(model.versions))))
        for serving in replaced:
            self._retire(serving)
        return model

    async def _build(self, name: str, opened: OpenedModel | None = None,
                     ) -> tuple[str, list[Serving]]:  # fmt: skip
        if opened is None:
            opened = await asyncio.to_thread(open_model, self.settings, name)
        built: list[Serving] = []
        try:
            for version in opened.versions:
                serving = await start_serving(version, self.settings, self._metrics, self._slots)
                built.append(serving)
        except BaseException:
            for serving in built:
                await serving.close()
            raise
        return opened.fingerprint, built

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
                try:
                    loaded = await self.load(name)
                except (RepositoryError, ValueError):
                    self.models[name].fingerprint = fingerprint  # not again until it changes
                    continue
                loaded.fingerprint = fingerprint
        for name in sorted(set(self.models) - on_disk):
            if self.models[name].versions:
                await self.unload(name)

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


def check_repository(settings: Settings) -> list[OpenedModel]:
    """What start-up will load, checked before any session exists: each start-up model's
    config.toml, the versions its policy serves, their files and graphs, the devices that would
    run them and its ranking spec. Raises RepositoryError or ValueError in one line naming the
    file; returns the models opened, for the registry to start from."""
    opened = []
    for name in startup_names(settings):
        model_path = settings.model.repository / name
        if not model_path.is_dir():
            raise RepositoryError(f"{model_path}: no such model folder ([model_control] "
                                  "startup_models names it)")  # fmt: skip
        model = open_model(settings, name)
        for version in model.versions:
            plan_devices(version, settings)
            ranker_for(version, settings)
        opened.append(model)
    return opened

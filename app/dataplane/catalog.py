"""The versions served now, by model name: what every request looks up, and the `Models` seam
between the data plane and whatever loads them (`app.dataplane.registry.ModelRegistry` in the
process that owns the sessions; `app.workers.link.EngineModels` in an HTTP worker)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from app.dataplane.serving import Serving
from config.settings import Settings
from models.artifacts.model_config import ModelConfig
from models.artifacts.repository import RepositoryError
from models.artifacts.servable import model_names
from scheduler.errors import NotReady, UnknownModel
from scheduler.faults import FaultMode

READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"


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


class Catalog:
    """Lookups only: no awaits, so a request looks up and submits in one step of the event loop
    (a version swapped out meanwhile is never submitted to)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.model.repository
        self.models: dict[str, ServedModel] = {}

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

    def versions(self, name: str) -> list[int]:
        model = self.models.get(name)
        return sorted(model.versions) if model is not None else []

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


class Models(Protocol):
    """What the data plane needs of the models it serves: the catalog's lookups, and loading."""

    settings: Settings

    def get(self, name: str, version: str | None = None) -> Serving: ...
    def versions(self, name: str) -> list[int]: ...
    def ready(self) -> bool: ...
    def config_of(self, name: str) -> ModelConfig: ...
    def serving(self) -> list[Serving]: ...
    def index(self) -> list[dict[str, str]]: ...
    async def start(self) -> None: ...
    async def load(self, name: str) -> None: ...
    async def unload(self, name: str) -> None: ...
    async def set_fault(self, device: str, mode: FaultMode) -> bool: ...
    def refresh_metrics(self, headroom_cap: int) -> None: ...
    async def close(self) -> None: ...

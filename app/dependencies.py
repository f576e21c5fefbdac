"""Access to the serving state from a route; refuses while the model is not ready.

The dependencies are `async def` on purpose: FastAPI runs a plain `def` dependency in its thread
pool, three thread hand-offs per request that cost more than the inference itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fastapi import Request

from app.admission import PRIORITY_HEADER, header_priority
from app.ranking import Ranker
from app.registry import ModelRegistry
from app.serving import Serving
from config.settings import Settings
from models.model_config import ModelConfig
from models.repository import ModelVersion
from scheduler.errors import InvalidInput, NotReady, UnknownModel

TIMEOUT_HEADER = "x-request-timeout-ms"


@dataclass(frozen=True)
class Ranking:
    """The /v1 model: a version served with feature tables and a ranking spec."""

    serving: Serving
    ranker: Ranker
    built: ModelVersion | None  # the build's manifest: /v1/score and /v1/examples need it

    def require_built(self, route: str) -> ModelVersion:
        if self.built is None:
            raise UnknownModel(
                f"{route} serves a model built by `python -m models build`; "
                f"{self.ranker.model_name!r} is a plain model (use V2 infer)"
            )
        return self.built


def check_accepting(request: Request) -> ModelRegistry:
    """The registry, once the start-up models are loaded and while not draining."""
    if request.app.state.draining:
        raise NotReady("draining: this replica is shutting down")
    if not request.app.state.started:
        raise NotReady("the models are not loaded yet")
    models: ModelRegistry = request.app.state.models
    return models


async def accepting(request: Request) -> ModelRegistry:
    return check_accepting(request)


async def ranking(request: Request) -> Ranking:
    name = request.app.state.settings.model.name
    serving = check_accepting(request).get(name)
    if serving.ranker is None:
        raise UnknownModel(
            f"model {name!r} has no feature tables and ranking spec ([ranking] in its "
            "config.toml) for /v1; call it through V2 (/v2/models/{name}/infer)"
        )
    if not serving.ready:
        raise NotReady(f"model {name!r} is not ready")
    return Ranking(serving, serving.ranker, serving.built)


async def settings(request: Request) -> Settings:
    value: Settings = request.app.state.settings
    return value


@dataclass(frozen=True)
class RequestOptions:
    timeout_seconds: float
    priority: int


def effective_timeout(default_ms: float, asked_ms: float | None) -> float:
    """The caller may shorten the default deadline, never lengthen it."""
    return (default_ms if asked_ms is None else min(default_ms, asked_ms)) / 1000


def model_defaults(settings: Settings, config: ModelConfig) -> tuple[float, Literal["high", "low"]]:
    """A model's default deadline (ms) and priority: its config.toml's, else [admission]'s."""
    admission = settings.admission
    return (
        config.default_timeout_ms or admission.default_timeout_ms,
        config.default_priority or admission.default_priority,
    )


async def request_options(request: Request) -> RequestOptions:
    """Deadline and priority of a /v1 request, from its headers (defaults: the /v1 model's)."""
    config: Settings = request.app.state.settings
    models: ModelRegistry = request.app.state.models
    default_ms, default_priority = model_defaults(config, models.config_of(config.model.name))
    asked = request.headers.get(TIMEOUT_HEADER)
    asked_ms = None
    if asked is not None:
        try:
            asked_ms = float(asked)
        except ValueError:
            asked_ms = -1.0
        if not asked_ms > 0:
            raise InvalidInput(f"X-Request-Timeout-Ms: {asked!r} is not a positive number")
    asked_priority = request.headers.get(PRIORITY_HEADER)
    priority = header_priority(asked_priority, default_priority)
    if priority is None:
        raise InvalidInput(f"X-Request-Priority: {asked_priority!r} is not 'high' or 'low'")
    return RequestOptions(effective_timeout(default_ms, asked_ms), priority)

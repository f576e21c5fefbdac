"""Access to the serving state from a route; refuses while the model is not ready.

The dependencies are `async def` on purpose: FastAPI runs a plain `def` dependency in its thread
pool, three thread hand-offs per request that cost more than the inference itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from app.admission import PRIORITY_HEADER, header_priority
from app.serving import Serving
from config.settings import Settings
from scheduler.errors import InvalidInput, NotReady

TIMEOUT_HEADER = "x-request-timeout-ms"


async def serving(request: Request) -> Serving:
    state: Serving | None = request.app.state.serving
    if request.app.state.draining:
        raise NotReady("draining: this replica is shutting down")
    if state is None or not state.ready:
        raise NotReady("the model is not ready")
    return state


async def settings(request: Request) -> Settings:
    value: Settings = request.app.state.settings
    return value


@dataclass(frozen=True)
class RequestOptions:
    timeout_seconds: float
    priority: int


def effective_timeout(settings: Settings, asked_ms: float | None) -> float:
    """The caller may shorten the default deadline, never lengthen it."""
    default = settings.admission.default_timeout_ms
    return (default if asked_ms is None else min(default, asked_ms)) / 1000


async def request_options(request: Request) -> RequestOptions:
    """Deadline and priority of a /v1 request, from its headers."""
    config: Settings = request.app.state.settings
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
    priority = header_priority(asked_priority, config.admission.default_priority)
    if priority is None:
        raise InvalidInput(f"X-Request-Priority: {asked_priority!r} is not 'high' or 'low'")
    return RequestOptions(effective_timeout(config, asked_ms), priority)

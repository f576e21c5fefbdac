"""Access to the serving state from a route; refuses while the model is not ready."""

from __future__ import annotations

from fastapi import Request

from app.serving import Serving
from config import Settings
from scheduler.errors import NotReady


def serving(request: Request) -> Serving:
    state: Serving | None = request.app.state.serving
    if state is None or not state.ready:
        raise NotReady("the model is not ready")
    return state


def settings(request: Request) -> Settings:
    value: Settings = request.app.state.settings
    return value

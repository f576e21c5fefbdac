"""What the REST routes read from a request: the data plane, and a /v1 request's deadline and
priority headers (V2 requests carry theirs as parameters)."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from app.dataplane.admission import named_priority
from app.dataplane.plane import DataPlane
from app.http.admission import PRIORITY_HEADER
from scheduler.errors import InvalidInput

TIMEOUT_HEADER = "x-request-timeout-ms"


def plane(request: Request) -> DataPlane:
    value: DataPlane = request.app.state.plane
    return value


@dataclass(frozen=True)
class Asked:
    """What a request asks for: a deadline in ms and a priority (None: its model's default)."""

    timeout_ms: float | None
    priority: int | None


def asked(request: Request) -> Asked:
    """X-Request-Timeout-Ms and X-Request-Priority; a malformed one is a 400 naming it."""
    headers = request.headers
    given = headers.get(TIMEOUT_HEADER)
    timeout_ms = None
    if given is not None:
        try:
            timeout_ms = float(given)
        except ValueError:
            timeout_ms = -1.0
        if not timeout_ms > 0:
            raise InvalidInput(f"X-Request-Timeout-Ms: {given[:32]!r} is not a positive number")
    priority = named_priority(headers.get(PRIORITY_HEADER), "X-Request-Priority")
    return Asked(timeout_ms, priority)


def bearer(request: Request) -> str | None:
    """The token of `Authorization: Bearer <token>`."""
    given = request.headers.get("authorization")
    return given.removeprefix("Bearer ") if given and given.startswith("Bearer ") else None

"""What the REST routes read from a request: the data plane, and a /v1 request's deadline and
priority headers (V2 requests carry theirs as parameters)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fastapi import Request

from app.dataplane.admission import named_priority
from app.dataplane.plane import DataPlane
from app.http.admission import PRIORITY_HEADER_BYTES
from scheduler.errors import InvalidInput

TIMEOUT_HEADER_BYTES = b"x-request-timeout-ms"
Headers = Iterable[tuple[bytes, bytes]]  # ASGI's raw header list


def plane(request: Request) -> DataPlane:
    value: DataPlane = request.app.state.plane
    return value


@dataclass(frozen=True)
class Asked:
    """What a request asks for: a deadline in ms and a priority (None: its model's default)."""

    timeout_ms: float | None
    priority: int | None


def asked(headers: Headers) -> Asked:
    """X-Request-Timeout-Ms and X-Request-Priority from a request's raw headers (ASGI's: names
    in lower case); a malformed one is a 400 naming it."""
    given = priority_given = None
    for name, value in headers:
        if name == TIMEOUT_HEADER_BYTES and given is None:  # the first one, as Starlette reads
            given = value.decode("latin-1")
        elif name == PRIORITY_HEADER_BYTES and priority_given is None:
            priority_given = value.decode("latin-1")
    timeout_ms = None
    if given is not None:
        try:
            timeout_ms = float(given)
        except ValueError:
            timeout_ms = -1.0
        if not timeout_ms > 0:
            raise InvalidInput(f"X-Request-Timeout-Ms: {given[:32]!r} is not a positive number")
    priority = named_priority(priority_given, "X-Request-Priority")
    return Asked(timeout_ms, priority)


def bearer(request: Request) -> str | None:
    """The token of `Authorization: Bearer <token>`."""
    given = request.headers.get("authorization")
    return given.removeprefix("Bearer ") if given and given.startswith("Bearer ") else None

"""Admission at the HTTP layer: the count of HTTP requests in progress, the one rule that refuses a
new inference request (`Admission.decide`), and the headroom that count leaves.

The guarded HTTP protocol (`app.http_protocol`, what `python -m app` runs) decides twice: as soon
as a request's head is parsed (its body then skipped), and again when its body is complete, where
it also counts the request in, synchronously, before its ASGI task has run. A burst of requests
read in one turn of the event loop therefore sees each other: counting inside the app, once each
task first ran, admitted a whole burst of new connections at once (a standing start at 3x:
refusals took 0.4-0.9 s in its first half second). Under any other ASGI server (an embedding
application, httpx's ASGITransport) `AdmissionMiddleware` applies the same rule inside the app.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from http import HTTPStatus

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from app.settings import AdmissionSettings
from scheduler.scheduler import HIGH, LOW

PRIORITY_HEADER = "x-request-priority"
PRIORITY_HEADER_BYTES = PRIORITY_HEADER.encode()  # ASGI header names are lower-case bytes
PRIORITIES = {"high": HIGH, "low": LOW}
ADMITTED = "recsys.admitted"  # scope extension: the protocol has counted this request in


class Decision(enum.Enum):
    ADMIT = "admit"
    REFUSE = "refuse"


def response_bytes(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """A whole HTTP/1.1 response, for the protocol to write to the socket itself."""
    head = [b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode())]
    head += [name + b": " + value + b"\r\n" for name, value in headers]
    return b"".join(head) + b"\r\n" + body


def is_inference(method: str, path: str) -> bool:
    """Requests admission may refuse: a POST to /v1 or a V2 infer. Health, metrics and admin
    requests are never refused."""
    return method == "POST" and (path.startswith("/v1/") or path.endswith("/infer"))


class Admission:
    """Refuse an inference request at once, before its body is read or parsed, while
    `max_in_flight_requests` HTTP requests are already in progress; a low-priority one (header
    X-Request-Priority) already at `low_priority_in_flight_fraction` of that, so it is shed first.
    Under overload the HTTP layer itself saturates a core before the scheduler's queue grows: a
    refusal here costs a fraction of a parsed and scored request, so the requests already accepted
    keep their latency."""

    def __init__(self, settings: AdmissionSettings,
                 on_refusal: Callable[[], None] | None = None) -> None:  # fmt: skip
        self.in_flight = 0  # refusals are never counted
        self.max_requests = settings.max_in_flight_requests
        self.max_low_priority = max(
            1, int(self.max_requests * settings.low_priority_in_flight_fraction)
        )
        self.default_low = settings.default_priority == "low"
        self.on_refusal = on_refusal
        self.status = settings.overload_status
        body = orjson.dumps({"error": "overloaded: too many requests in progress"})
        self.refusal_body = body
        self.refusal_headers = [(b"content-type", b"application/json"), (b"retry-after", b"1"),
                                (b"content-length", str(len(body)).encode())]  # fmt: skip
        self._start = {"type": "http.response.start", "status": self.status,
                       "headers": self.refusal_headers}  # fmt: skip
        self._body = {"type": "http.response.body", "body": body}

    def decide(self, method: str, path: str, headers: Iterable[tuple[bytes, bytes]]) -> Decision:
        if self.in_flight < self.max_low_priority or not is_inference(method, path):
            return Decision.ADMIT  # the common case: no header is read
        low = next((v.lower() == b"low" for n, v in headers if n == PRIORITY_HEADER_BYTES), None)
        return self.decide_call(low)

    def decide_call(self, low_priority: bool | None) -> Decision:
        """The rule for an inference request of any transport (HTTP, gRPC); `low_priority`
        None: the default priority."""
        count = self.in_flight
        if count < self.max_low_priority:
            return Decision.ADMIT
        if count >= self.max_requests:
            return Decision.REFUSE
        low = self.default_low if low_priority is None else low_priority
        return Decision.REFUSE if low else Decision.ADMIT

    def enter(self) -> None:
        self.in_flight += 1

    def leave(self, _: object = None) -> None:  # also a task's done callback
        self.in_flight -= 1

    def headroom(self, in_flight: int) -> int:
        """0-100: how far `in_flight` requests are from the limit."""
        return max(0, round(100 * (1 - in_flight / self.max_requests)))

    def refusal_bytes(self, default_headers: list[tuple[bytes, bytes]]) -> bytes:
        """The whole HTTP/1.1 refusal, for a server that writes it to the socket itself."""
        headers = [*default_headers, *self.refusal_headers]
        return response_bytes(self.status, headers, self.refusal_body)

    async def answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The refusal as an ASGI app, for a request refused once its body is complete."""
        if self.on_refusal:
            self.on_refusal()
        await send(self._start)
        await send(self._body)


class AdmissionMiddleware:
    """The same rule inside the app, for requests the guarded protocol did not admit."""

    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or ADMITTED in scope.get("extensions", ()):
            await self.app(scope, receive, send)
            return
        admission = self.admission
        if admission.decide(scope["method"], scope["path"], scope["headers"]) is Decision.REFUSE:
            await admission.answer(scope, receive, send)
            return
        admission.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            admission.leave()


def header_priority(value: str | None, default: str) -> int | None:
    """X-Request-Priority (high | low, any case) as the scheduler's priority; None if invalid."""
    return PRIORITIES.get((default if value is None else value).lower())


def v2_priority(value: int | None, default: str) -> int:
    """Triton's `priority` parameter: 1 highest, 2 or more low, 0 or absent the default."""
    return PRIORITIES[default] if not value else min(value - 1, LOW)

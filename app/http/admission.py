"""Admission at the HTTP layer: the data plane's rule (`app.dataplane.admission`) applied to HTTP
requests, and the refusal written as HTTP.

The guarded HTTP protocol (`app.http.protocol`, what `python -m app` runs) decides twice: as soon
as a request's head is parsed (its body then skipped), and again when its body is complete, where
it also counts the request in, synchronously, before its ASGI task has run. A burst of requests
read in one turn of the event loop therefore sees each other: counting inside the app, once each
task first ran, admitted a whole burst of new connections at once (a standing start at 3x:
refusals took 0.4-0.9 s in its first half second). Under any other ASGI server (an embedding
application, httpx's ASGITransport) `AdmissionMiddleware` applies the same rule inside the app.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from typing import TypeVar

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from app.dataplane.admission import PRIORITIES, Admission, Decision
from scheduler.scheduler import LOW

PRIORITY_HEADER = "x-request-priority"
PRIORITY_HEADER_BYTES = PRIORITY_HEADER.encode()  # ASGI header names are lower-case bytes
T = TypeVar("T")
ADMITTED = "recsys.admitted"  # scope extension: the protocol has counted this request in


def response_bytes(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """A whole HTTP/1.1 response, for the protocol to write to the socket itself."""
    head = [b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode())]
    head += [name + b": " + value + b"\r\n" for name, value in headers]
    return b"".join(head) + b"\r\n" + body


def is_inference(method: str, path: str) -> bool:
    """Requests admission may refuse: a POST to /v1 or a V2 infer. Health, metrics and admin
    requests are never refused."""
    return method == "POST" and (path.startswith("/v1/") or path.endswith("/infer"))


def header_is_low(headers: Iterable[tuple[bytes, bytes]]) -> bool | None:
    """X-Request-Priority as admission reads it: low, high, or None (absent, or not a priority:
    the route refuses that with 400 naming the header)."""
    for name, value in headers:
        if name == PRIORITY_HEADER_BYTES:
            level = PRIORITIES.get(value.decode("latin-1").lower())
            return None if level is None else level == LOW
    return None


class HttpAdmission:
    """The rule of `admission` for HTTP requests, and its refusal as HTTP."""

    def __init__(self, admission: Admission, overload_status: int) -> None:
        self.rule = admission
        self.status = overload_status
        body = orjson.dumps({"error": "overloaded: too many requests in progress"})
        self.refusal_body = body
        self.refusal_headers = [(b"content-type", b"application/json"), (b"retry-after", b"1"),
                                (b"content-length", str(len(body)).encode())]  # fmt: skip
        self._start = {"type": "http.response.start", "status": self.status,
                       "headers": self.refusal_headers}  # fmt: skip
        self._body = {"type": "http.response.body", "body": body}

    def decide(self, method: str, path: str, headers: Iterable[tuple[bytes, bytes]]) -> Decision:
        rule = self.rule
        if rule.in_flight < rule.max_low_priority or not is_inference(method, path):
            return Decision.ADMIT  # the common case: no header is read
        return rule.decide(header_is_low(headers))

    def refusal_bytes(self, default_headers: list[tuple[bytes, bytes]]) -> bytes:
        """The whole HTTP/1.1 refusal, for a server that writes it to the socket itself."""
        headers = [*default_headers, *self.refusal_headers]
        return response_bytes(self.status, headers, self.refusal_body)

    async def answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The refusal as an ASGI app, for a request refused once its body is complete."""
        self.rule.on_refusal()
        await send(self._start)
        await send(self._body)

    async def within(self, scope: Scope, receive: Receive, send: Send,
                     run: Callable[[], Awaitable[T]]) -> T | None:  # fmt: skip
        """`run()` counted in, unless the rule refuses the request (answered here: None). One the
        guarded protocol counted in already runs as it is."""
        if ADMITTED in scope.get("extensions", ()):
            return await run()
        if self.decide(scope["method"], scope["path"], scope["headers"]) is Decision.REFUSE:
            await self.answer(scope, receive, send)
            return None
        self.rule.enter()
        try:
            return await run()
        finally:
            self.rule.leave()


class AdmissionMiddleware:
    """The same rule inside the app, for requests the guarded protocol did not admit."""

    def __init__(self, app: ASGIApp, admission: HttpAdmission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.admission.within(scope, receive, send, lambda: self.app(scope, receive, send))

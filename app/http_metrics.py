"""ASGI middleware: request latency histogram by route and status, the in-flight limit on
inference requests, and the body size limit."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.dependencies import PRIORITY_HEADER
from scheduler.metrics import LATENCY_BUCKETS

PRIORITY_HEADER_BYTES = PRIORITY_HEADER.encode()  # ASGI header names are lower-case bytes


class InFlight:
    """HTTP requests in progress."""

    def __init__(self) -> None:
        self.count = 0


class RequestMetrics:
    """Also counts the HTTP requests in progress (`in_flight`), a load signal of its own."""

    def __init__(
        self, app: ASGIApp, registry: CollectorRegistry, prefix: str, in_flight: InFlight
    ) -> None:
        self.app = app
        self.in_flight = in_flight
        self.latency = Histogram(
            f"{prefix}_request_duration_seconds", "HTTP request latency", ["endpoint", "status"],
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.in_flight.count += 1
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self.in_flight.count -= 1
            route: Any = scope.get("route")
            endpoint = getattr(route, "path", "unmatched")
            self.latency.labels(endpoint=endpoint, status=str(status)).observe(
                time.perf_counter() - started
            )


class InFlightLimit:
    """Refuse an inference request (a POST to /v1 or a V2 infer) at once, before its body is read
    or parsed, while `max_requests` HTTP requests are already in progress; a low-priority one
    (header X-Request-Priority) already at `low_priority_fraction` of that, so it is shed first.
    Under overload the HTTP layer itself saturates a core before the scheduler's queue grows: a
    refusal here costs a fraction of a parsed and scored request, so the requests already accepted
    keep their latency. Health, metrics and admin requests are never refused."""

    def __init__(self, app: ASGIApp, in_flight: InFlight, max_requests: int, status: int,
                 low_priority_fraction: float, default_low: bool,
                 on_refusal: Callable[[], None] | None = None) -> None:  # fmt: skip
        self.app = app
        self.in_flight = in_flight
        self.max_requests = max_requests
        self.max_low_priority = max(1, int(max_requests * low_priority_fraction))
        self.default_low = default_low
        self.on_refusal = on_refusal
        self.status = status
        body = orjson.dumps({"error": "overloaded: too many requests in progress"})
        self.refusal_body = body
        self.refusal_headers = [(b"content-type", b"application/json"), (b"retry-after", b"1"),
                                (b"content-length", str(len(body)).encode())]  # fmt: skip
        self.start = {"type": "http.response.start", "status": status,
                      "headers": self.refusal_headers}  # fmt: skip
        self.body = {"type": "http.response.body", "body": body}

    def refuses(self, scope: Scope) -> bool:
        return scope["type"] == "http" and self.refuses_request(
            scope["method"], scope["path"], scope["headers"]
        )

    def refuses_request(self, method: str, path: str, headers: Iterable[tuple[bytes, bytes]],
                        ) -> bool:  # fmt: skip
        count = self.in_flight.count  # counted inside, by RequestMetrics: refusals are not
        if count < self.max_low_priority or method != "POST":
            return False
        if not (path.startswith("/v1/") or path.endswith("/infer")):
            return False
        if count >= self.max_requests:
            return True
        for name, value in headers:
            if name == PRIORITY_HEADER_BYTES:
                return bool(value.lower() == b"low")
        return self.default_low

    def refusal_bytes(self, default_headers: list[tuple[bytes, bytes]]) -> bytes:
        """The whole HTTP/1.1 refusal, for a server that writes it to the socket itself."""
        head = [b"HTTP/1.1 %d %s\r\n" % (self.status, HTTPStatus(self.status).phrase.encode())]
        head += [name + b": " + value + b"\r\n" for name, value in default_headers]
        head += [name + b": " + value + b"\r\n" for name, value in self.refusal_headers]
        return b"".join(head) + b"\r\n" + self.refusal_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.refuses(scope):
            if self.on_refusal:
                self.on_refusal()
            await send(self.start)
            await send(self.body)
            return
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuse bodies over `max_bytes` with 413, by Content-Length at once or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except BodyTooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = orjson.dumps({"error": f"body: larger than the limit of {self.max_bytes} bytes"})
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class BodyTooLarge(Exception):
    pass

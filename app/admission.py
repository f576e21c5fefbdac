"""Admission at the HTTP layer: the count of HTTP requests in progress and the one rule that
refuses a new inference request. The HTTP protocol decides it twice: as soon as a request's head
is parsed (its body then skipped), and again when its body is complete, where it also counts the
request in, synchronously, before its ASGI task has run. A burst of requests read in one turn of
the event loop therefore sees each other: counting inside the app, once each task first ran,
admitted a whole burst of new connections at once (a standing start at 3x: refusals took 0.4-0.9 s
in its first half second)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from http import HTTPStatus

import orjson
from starlette.types import Receive, Scope, Send

from app.dependencies import PRIORITY_HEADER

PRIORITY_HEADER_BYTES = PRIORITY_HEADER.encode()  # ASGI header names are lower-case bytes


def response_bytes(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """A whole HTTP/1.1 response, for the protocol to write to the socket itself."""
    head = [b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode())]
    head += [name + b": " + value + b"\r\n" for name, value in headers]
    return b"".join(head) + b"\r\n" + body


class InFlight:
    """HTTP requests in progress: counted in by the protocol when it starts a request's ASGI task,
    out when the task ends."""

    def __init__(self) -> None:
        self.count = 0


class InFlightLimit:
    """Refuse an inference request (a POST to /v1 or a V2 infer) at once, before its body is read
    or parsed, while `max_requests` HTTP requests are already in progress; a low-priority one
    (header X-Request-Priority) already at `low_priority_fraction` of that, so it is shed first.
    Under overload the HTTP layer itself saturates a core before the scheduler's queue grows: a
    refusal here costs a fraction of a parsed and scored request, so the requests already accepted
    keep their latency. Health, metrics and admin requests are never refused."""

    def __init__(self, in_flight: InFlight, max_requests: int, status: int,
                 low_priority_fraction: float, default_low: bool,
                 on_refusal: Callable[[], None] | None = None) -> None:  # fmt: skip
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

    def refuses_request(self, method: str, path: str, headers: Iterable[tuple[bytes, bytes]],
                        ) -> bool:  # fmt: skip
        count = self.in_flight.count  # refusals are never counted
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
        headers = [*default_headers, *self.refusal_headers]
        return response_bytes(self.status, headers, self.refusal_body)

    async def answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The refusal as an ASGI app, for a request refused once its body is complete."""
        if self.on_refusal:
            self.on_refusal()
        await send(self.start)
        await send(self.body)

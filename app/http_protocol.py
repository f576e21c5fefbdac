"""uvicorn's httptools protocol with the in-flight limit applied as soon as a request's headers are
parsed. A refused request gets its 503 written straight to the socket: no ASGI scope, response
cycle or task is made for it, and its body is skipped by the parser. Under 3x overload most
requests are refusals: refused here (about 5 µs of Python each, parsing included) rather than by
ASGI middleware, goodput at 3x rose from 82% to 90-91% of capacity (`python -m bench.overload`).
Anything unusual (a pipelined request behind one still in progress, a URL that is not a plain
path) takes the normal path, where `InFlightLimit` decides the same way.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.http_metrics import InFlightLimit


class _Answered:
    """Stands in for uvicorn's response cycle of a request the protocol answered itself: complete,
    so the parser's body callbacks for it do nothing."""

    response_complete = True
    disconnected = False
    keep_alive = True
    message_event = asyncio.Event()


ANSWERED = _Answered()


def protocol_with_limit(limit: InFlightLimit) -> type[HttpToolsProtocol]:
    cached: list[object] = [None, b""]  # uvicorn replaces default_headers (Date) every second

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        def on_headers_complete(self) -> None:
            in_progress = self.cycle is not None and not self.cycle.response_complete
            if not in_progress and self.url.startswith(b"/") and limit.refuses_request(
                self.parser.get_method().decode("ascii"),
                self.url.partition(b"?")[0].decode("latin-1"),
                self.headers,
            ):  # fmt: skip
                self.refuse()
                return
            super().on_headers_complete()

        def refuse(self) -> None:
            if limit.on_refusal:
                limit.on_refusal()
            defaults = self.server_state.default_headers
            if cached[0] is not defaults:
                cached[:] = [defaults, limit.refusal_bytes(defaults)]
            self.cycle = ANSWERED  # type: ignore[assignment]
            self.transport.write(cached[1])  # type: ignore[arg-type]
            # A client waiting for "100 Continue" may never send the body the parser would then
            # expect: close rather than read its next request as that body.
            closing = self.expect_100_continue or self.parser.get_http_version() == "1.0"
            if closing or not self.parser.should_keep_alive():
                self.transport.close()
            else:
                self.on_response_complete()

    return LimitedHttpToolsProtocol

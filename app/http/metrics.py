"""The HTTP layer's metrics: the request latency histogram (ASGI middleware, which also counts the
requests in progress) and what the protocol refused or closed before any ASGI work."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ConnectionMetrics:
    """Requests the protocol answered itself (by reason) and open connections."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.rejected = Counter(
            f"{prefix}_http_rejected_requests", "Requests answered by the HTTP protocol with an "
            "error and connection close, by reason", ["reason"], registry=registry,
        )  # fmt: skip
        self.closed = Counter(
            f"{prefix}_http_closed_connections", "Connections the server closed on its own, by "
            "reason: idle_evicted (the connection cap), refused (the cap with none idle), "
            "header_timeout, body_timeout", ["reason"], registry=registry,
        )  # fmt: skip
        self.open = Gauge(
            f"{prefix}_http_open_connections", "Open HTTP connections", registry=registry,
            multiprocess_mode="livesum",  # with workers: theirs, added up
        )  # fmt: skip


class RequestMetrics:
    """Each request's latency, by route and status, into the histogram gRPC calls share."""

    def __init__(self, app: ASGIApp, latency: Histogram) -> None:
        self.app = app
        self.latency = latency

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

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route: Any = scope.get("route")
            endpoint = getattr(route, "path", "unmatched")
            self.latency.labels(endpoint=endpoint, status=str(status)).observe(
                time.perf_counter() - started
            )

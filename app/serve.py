"""The transports over one data plane, served: REST (FastAPI on uvicorn, uvloop and the guarded
httptools protocol) and, when `[grpc] port` is set, gRPC beside it on the same event loop."""

from __future__ import annotations

import functools
import socket
from collections.abc import Awaitable, Callable

import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from app.assembly import Assembled
from app.http.app import Service, create_app, http_protocol
from app.http.hot import HotRoutes
from app.http.server import DrainingServer
from config.settings import Settings


def rest_app(settings: Settings, assembled: Assembled, scraped: CollectorRegistry | None = None,
             shared_ports: bool = False) -> FastAPI:  # fmt: skip
    """REST over the plane, and gRPC beside it when `[grpc] port` is set; `shared_ports`:
    sibling processes listen on the same ports (HTTP workers)."""
    services: list[Service] = []
    if settings.grpc.port:
        services.append(functools.partial(grpc_service, settings, assembled, shared_ports))
    return create_app(settings, assembled.plane, assembled.registry, assembled.latency, scraped,
                      services, shared_ports)  # fmt: skip


async def grpc_service(settings: Settings, assembled: Assembled,
                       shared_port: bool) -> Callable[[], Awaitable[None]]:  # fmt: skip
    from app.grpc.service import start_grpc  # grpcio only where gRPC is served

    server = await start_grpc(assembled.plane, settings, assembled.latency, shared_port)

    async def stop() -> None:
        await server.stop(settings.server.graceful_shutdown_seconds)

    return stop


def serve_http(settings: Settings, assembled: Assembled, scraped: CollectorRegistry | None = None,
               sockets: list[socket.socket] | None = None) -> None:  # fmt: skip
    """`sockets`: the listener a supervisor handed this process, one of several on its ports."""
    app = rest_app(settings, assembled, scraped, shared_ports=sockets is not None)
    config = uvicorn.Config(
        HotRoutes(app, assembled.latency, settings.admission.overload_status),
        host=settings.server.host,
        port=settings.server.port,
        loop="uvloop",
        http=http_protocol(app, settings),
        timeout_keep_alive=settings.http.keep_alive_timeout_seconds,  # type: ignore[arg-type]
        log_level=settings.server.log_level,
        access_log=False,
        proxy_headers=False,  # client addresses are not used; one layer less per request
        timeout_graceful_shutdown=int(settings.server.graceful_shutdown_seconds),
    )
    server = DrainingServer(config, assembled.plane, settings.server.drain_delay_seconds)
    server.run(sockets=sockets)

"""The REST transport's app: `create_app(settings, plane, ...)` builds the FastAPI app over one data
plane; the lifespan starts the plane (models loaded, devices warmed up: readiness stays false
until then) and the services beside it, and closes them at shutdown."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.dataplane.documents import SERVER_VERSION
from app.dataplane.plane import DataPlane
from app.http import admin, errors, load, repository, v1, v2
from app.http.admission import AdmissionMiddleware, HttpAdmission
from app.http.metrics import ConnectionMetrics, RequestMetrics
from app.http.protocol import ConnectionCap, connection_limit, guarded_protocol
from config.settings import Settings

log = logging.getLogger(__name__)
# A service beside REST on the same event loop (gRPC): started, it returns how to stop it.
Service = Callable[[], Awaitable[Callable[[], Awaitable[None]]]]


def create_app(settings: Settings, plane: DataPlane, registry: CollectorRegistry,
               latency: Histogram, scraped: CollectorRegistry | None = None,
               services: Sequence[Service] = (), shared_ports: bool = False,
               ) -> FastAPI:  # fmt: skip
    """`registry`: where this process's metrics are kept; `latency`: the request latency
    histogram every transport shares; `scraped`: what /metrics reports (by default `registry`;
    a server of several processes passes their sum); `services`: started beside REST;
    `shared_ports`: other processes listen on the same ports (the agent check's)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await plane.start()
        lb = settings.load_balancing
        agent = None
        stops = []
        try:
            if lb.agent_check_port:
                agent = await load.start_agent_check(
                    plane, lb.agent_check_host, lb.agent_check_port, shared_ports
                )
            for start in services:
                stops.append(await start())
        except BaseException:
            await plane.close()
            raise
        # Everything loaded so far lives as long as the server: out of the collector's sight,
        # full collections stay short (they were tens of milliseconds under load).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            if agent is not None:
                agent.close()
            for stop in stops:  # calls in progress finish; new ones are refused
                await stop()
            await plane.close()

    app = FastAPI(
        title="recsys-serve",
        description="Real-time recommendation inference: /v1 ranking API and KServe V2.",
        version=SERVER_VERSION,
        lifespan=lifespan,
    )
    app.state.plane = plane
    admission = HttpAdmission(plane.admission, settings.admission.overload_status)
    app.state.http_admission = admission
    app.state.connection_metrics = ConnectionMetrics(registry, settings.metrics.prefix)
    errors.install(app, settings.admission.overload_status)
    app.include_router(v1.router)
    app.include_router(v2.router)
    app.include_router(repository.router)
    app.include_router(load.router)
    if settings.faults.admin_enabled:
        app.include_router(admin.router)
        log.warning("fault injection is enabled: /admin/faults/{device}")
    reported = scraped or registry

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        plane.refresh_metrics(plane.admission.in_flight - 1)
        return Response(generate_latest(reported), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(AdmissionMiddleware, admission=admission)
    app.add_middleware(RequestMetrics, latency=latency)
    return app


def http_protocol(app: FastAPI, settings: Settings) -> type[HttpToolsProtocol]:
    """The guarded httptools protocol for `python -m app`: admission, limits, the connection cap."""
    metrics: ConnectionMetrics = app.state.connection_metrics
    cap = ConnectionCap(connection_limit(settings.http.max_connections), metrics)
    return guarded_protocol(
        app.state.http_admission, settings.http, settings.limits.max_body_bytes, cap, metrics
    )

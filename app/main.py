"""The app factory: `create_app(settings)` builds the FastAPI app; the lifespan loads the models,
starts and warms up their devices (readiness stays false until then) and closes them at shutdown."""

from __future__ import annotations

import dataclasses
import gc
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app import admin, errors, load, repository_api, v1, v2
from app.admission import Admission, AdmissionMiddleware
from app.engine_link import EngineLink, RemoteModelRegistry
from app.http_metrics import ConnectionMetrics, RequestMetrics
from app.http_protocol import ConnectionCap, connection_limit, guarded_protocol
from app.registry import ModelRegistry, OpenedModel, load_failure_counter
from app.serving import cpu_budget, inference_threads, runtime_cores
from config.settings import Settings
from scheduler.load import combine
from scheduler.metrics import SchedulerMetrics

log = logging.getLogger(__name__)


def threads_line(settings: Settings) -> str:
    budget, cores = cpu_budget(), runtime_cores(settings)
    each = ", ".join(
        f"{d.name} {inference_threads(d, settings.devices, cores)}" for d in settings.devices
    )
    return f"{budget.describe()}; runtime threads: {each}"


def create_app(settings: Settings, registry: CollectorRegistry | None = None,
               checked: Sequence[OpenedModel] = (), link: EngineLink | None = None,
               ) -> FastAPI:  # fmt: skip
    """`checked`: what check_repository opened, so the lifespan does not open it again.
    `link`: an HTTP worker's engine (`[server] workers` > 1), which scores its requests."""
    registry = registry or CollectorRegistry()
    scheduler_metrics = SchedulerMetrics(registry, settings.metrics.prefix)
    on_failure = load_failure_counter(registry, settings.metrics.prefix)
    models = (
        ModelRegistry(settings, scheduler_metrics, on_failure, checked)
        if link is None
        else RemoteModelRegistry(settings, link, checked)
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            if link is not None:
                await link.start()
            await models.start()
        except BaseException:
            await models.close()
            if link is not None:
                await link.close()
            raise
        app.state.started = True
        lb = settings.load_balancing
        agent = grpc_server = None
        if lb.agent_check_port:
            agent = await load.start_agent_check(
                app, lb.agent_check_host, lb.agent_check_port, shared=link is not None
            )
        if settings.grpc.port:
            from app.grpc_service import start_grpc  # grpcio only where gRPC is served

            grpc_server = await start_grpc(app, settings)
        # Everything loaded so far lives as long as the server: out of the collector's sight,
        # full collections stay short (they were tens of milliseconds under load).
        gc.collect()
        gc.freeze()
        served = [f"{s.version.model} version {s.version.number}" for s in models.serving()]
        log.info("ready: %s; %s", ", ".join(served) or "no model loaded", threads_line(settings))
        try:
            yield
        finally:
            if agent is not None:
                agent.close()
            if grpc_server is not None:  # calls in progress finish; new ones are refused
                await grpc_server.stop(settings.server.graceful_shutdown_seconds)
            app.state.started = False
            await models.close()
            if link is not None:
                await link.close()

    app = FastAPI(
        title="recsys-serve",
        description="Real-time recommendation inference: /v1 ranking API and KServe V2.",
        version=v2.SERVER_VERSION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.scheduler_metrics = scheduler_metrics
    app.state.connection_metrics = ConnectionMetrics(registry, settings.metrics.prefix)
    app.state.models = models
    app.state.started = False  # the lifespan has loaded the start-up models
    app.state.draining = False  # set by the server on SIGTERM
    refused = scheduler_metrics.refused.labels(reason="in_flight")
    admission = Admission(settings.admission, on_refusal=refused.inc)
    app.state.admission = admission
    errors.install(app)
    app.include_router(v1.router)
    app.include_router(v2.router)
    app.include_router(repository_api.router)
    app.include_router(load.router)
    if settings.faults.admin_enabled:
        app.include_router(admin.router)
        log.warning("fault injection is enabled: /admin/faults/{device}")

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        if link is not None:  # every process's files, summed; the engine refreshes its gauges
            return Response(generate_latest(server_wide()), media_type=CONTENT_TYPE_LATEST)
        served = models.serving()
        for serving in served:
            if serving.scheduler.metrics is not None:
                serving.scheduler.metrics.refresh_devices(serving.scheduler.devices)
        if served:
            report = combine([s.scheduler.load() for s in served])
            scheduler_metrics.refresh_load(
                dataclasses.replace(
                    report,
                    headroom=load.replica_headroom(app, report.headroom, admission.in_flight - 1),
                )
            )
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(AdmissionMiddleware, admission=admission)
    app.add_middleware(RequestMetrics, registry=registry, prefix=settings.metrics.prefix)
    return app


def server_wide() -> CollectorRegistry:
    """The metrics of every process of a server with workers (prometheus_client's multiprocess
    files, PROMETHEUS_MULTIPROC_DIR)."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def http_protocol(app: FastAPI) -> type[HttpToolsProtocol]:
    """The guarded httptools protocol for `python -m app`: admission, limits, the connection cap."""
    settings: Settings = app.state.settings
    metrics: ConnectionMetrics = app.state.connection_metrics
    cap = ConnectionCap(connection_limit(settings.http.max_connections), metrics)
    return guarded_protocol(
        app.state.admission, settings.http, settings.limits.max_body_bytes, cap, metrics
    )

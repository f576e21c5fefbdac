"""Load-balancer integration: GET /v1/load, and the HAProxy agent-check listener."""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, FastAPI, Request

from app.admission import Admission
from app.registry import ModelRegistry
from scheduler.errors import NotReady
from scheduler.load import LoadReport, combine

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["operations"])


@router.get("/load")
async def load(request: Request) -> dict[str, Any]:
    """Queue depth, predicted wait, batches in flight per device, recent throughput, headroom."""
    combined = server_load(request.app)
    if combined is None:
        raise NotReady("no model is loaded")
    report = asdict(combined)
    if math.isinf(report["predicted_wait_seconds"]):
        report["predicted_wait_seconds"] = None
    in_flight = request.app.state.admission.in_flight - 1  # not this request
    return {
        **report,
        "headroom": replica_headroom(request.app, report["headroom"], in_flight),
        "in_flight_requests": in_flight,
        "draining": request.app.state.draining,
    }


def server_load(app: FastAPI) -> LoadReport | None:
    """Every served version's load, combined; None before start-up or with no model loaded."""
    models: ModelRegistry = app.state.models
    served = models.serving() if app.state.started else []
    return combine([s.scheduler.load() for s in served]) if served else None


def replica_headroom(app: FastAPI, scheduler_headroom: int, in_flight_requests: int) -> int:
    """The scheduler's headroom, capped by how busy the HTTP layer is."""
    admission: Admission = app.state.admission
    return min(scheduler_headroom, admission.headroom(in_flight_requests))


def agent_reply(app: FastAPI) -> str:
    """HAProxy agent-check answer: the replica's weight as a percentage of its configured one."""
    if app.state.draining:
        return "drain\n"
    report = server_load(app)
    if report is None or not report.healthy_devices:
        return "down\n"
    headroom = replica_headroom(app, report.headroom, app.state.admission.in_flight)
    return f"up {max(1, headroom)}%\n"


async def start_agent_check(app: FastAPI, host: str, port: int,
                            shared: bool = False) -> asyncio.Server:  # fmt: skip
    """`shared`: every worker process of the server listens on the port (SO_REUSEPORT)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(agent_reply(app).encode())
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(answer, host, port, reuse_port=shared)
    log.info("HAProxy agent-check listening on %s:%d", host, port)
    return server

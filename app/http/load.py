"""Load-balancer integration: GET /v1/load, and the HAProxy agent-check listener."""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request

from app.dataplane.plane import DataPlane
from app.http.dependencies import plane
from scheduler.errors import NotReady

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["operations"])


@router.get("/load")
async def load(request: Request) -> dict[str, Any]:
    """Queue depth, predicted wait, batches in flight per device, recent throughput, headroom."""
    served = plane(request)
    in_flight = served.admission.in_flight - 1  # not this request
    combined = served.load(in_flight)
    if combined is None:
        raise NotReady("no model is loaded")
    report = asdict(combined)
    if math.isinf(report["predicted_wait_seconds"]):
        report["predicted_wait_seconds"] = None
    return {**report, "in_flight_requests": in_flight, "draining": served.draining}


async def start_agent_check(plane: DataPlane, host: str, port: int,
                            shared: bool = False) -> asyncio.Server:  # fmt: skip
    """`shared`: every worker process of the server listens on the port (SO_REUSEPORT)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(plane.agent_reply().encode())
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(answer, host, port, reuse_port=shared)
    log.info("HAProxy agent-check listening on %s:%d", host, port)
    return server

"""uvicorn's Server with a graceful drain on SIGTERM.

SIGTERM: readiness turns false and new inference requests are refused with 503 at once; after
`drain_delay_seconds` uvicorn's own shutdown begins (the listener closes, requests already accepted
finish within `graceful_shutdown_seconds`, then the lifespan closes the devices); exit status 0.
A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from types import FrameType

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_delay_seconds: float) -> None:
        super().__init__(config)
        self._app = app
        self._drain_delay = drain_delay_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or self._app.state.draining or self._loop is None:
            super().handle_exit(sig, frame)
            return
        self._app.state.draining = True
        log.info("SIGTERM: draining (readiness false, new requests refused)")
        self._loop.call_soon_threadsafe(self._start_drain, sig, frame)

    def _start_drain(self, sig: int, frame: FrameType | None) -> None:
        async def drain() -> None:
            await asyncio.sleep(self._drain_delay)
            log.info("closing the listener; waiting for accepted requests")
            # Not handle_exit: uvicorn would re-raise SIGTERM after shutdown and exit 143.
            self.should_exit = True

        self._drain_task = asyncio.get_running_loop().create_task(drain())

"""uvicorn's Server with a graceful drain on SIGTERM, accepting new connections in bursts.

SIGTERM: readiness turns false and new inference requests are refused with 503 at once; after
`drain_delay_seconds` uvicorn's own shutdown begins (the listener closes, requests already accepted
finish within `graceful_shutdown_seconds`, then the lifespan closes the devices); exit status 0.
A second signal exits at once.

Bursts: uvloop accepts one connection per turn of its event loop. Under load a turn lasts
milliseconds, so a burst of new clients waited in the listen queue, unread and unrefused: at 3x
capacity from a standing start (512 new connections), refusals took up to 1 s in the first half
second. A second watcher on a duplicate of the listening socket accepts up to `ACCEPT_BURST`
connections per turn and hands them to the same protocol.

Idle: uvicorn's main loop wakes ten times a second to notice an exit; here it wakes once a second
(its Date header's resolution) and at once when an exit is asked for. An idle server's wake-ups
cost CPU that light load pays per request: on the 2-core VM, 12 wake-ups a second took 2.7 ms of
CPU a second, some 130 us per request at 20 requests/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import sys
from types import FrameType
from typing import Any

import uvicorn

from app.dataplane.plane import DataPlane
from app.dataplane.throttled import Throttled

log = logging.getLogger(__name__)
ACCEPT_BURST = 128
ACCEPT_PAUSE_SECONDS = 0.1
TICK_SECONDS = 1.0
STARTUP_FAILURE = 3  # uvicorn's exit status when it cannot start


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, plane: DataPlane,
                 drain_delay_seconds: float) -> None:  # fmt: skip
        super().__init__(config)
        self._plane = plane
        self._drain_delay = drain_delay_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._exit_asked: asyncio.Event | None = None

    async def main_loop(self) -> None:
        """uvicorn's, ticking once a second; `handle_exit` and the drain wake it at once."""
        self._exit_asked = asyncio.Event()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 10) % 864000  # on_tick renders the Date header every 10th
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_SECONDS):
                    await self._exit_asked.wait()

    def _wake(self) -> None:
        if self._exit_asked is not None:
            self._exit_asked.set()

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._listeners: list[socket.socket] = []
        self._warn_accept = Throttled("accept failed (descriptor limit?)", log)
        await super().serve(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        loop = asyncio.get_running_loop()
        protocol_class: Any = self.config.http_protocol_class
        self._protocol = functools.partial(protocol_class, config=self.config,
                                           server_state=self.server_state,
                                           app_state=self.lifespan.state)  # fmt: skip
        for server in getattr(self, "servers", []):
            for listening in server.sockets:
                if listening is None:  # uvloop closed it: listen() failed, and it said nothing
                    log.error("cannot listen on [server] port %d: another socket listens there",
                              self.config.port)  # fmt: skip
                    await self.lifespan.shutdown()  # as uvicorn does when it cannot bind
                    sys.exit(STARTUP_FAILURE)
                if listening.family not in (socket.AF_INET, socket.AF_INET6):
                    continue
                duplicate = socket.socket(fileno=os.dup(listening.fileno()))
                duplicate.setblocking(False)
                loop.add_reader(duplicate.fileno(), self._accept_burst, duplicate)
                self._listeners.append(duplicate)

    def _accept_burst(self, listening: socket.socket) -> None:
        assert self._loop is not None
        for _ in range(ACCEPT_BURST):
            try:
                connection, _ = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: pause this watcher a moment, say so
                self._warn_accept(exc)
                fileno = listening.fileno()
                self._loop.remove_reader(fileno)
                self._loop.call_later(ACCEPT_PAUSE_SECONDS, self._resume_accept, listening)
                return
            connection.setblocking(False)
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._loop.create_task(self._loop.connect_accepted_socket(self._protocol, connection))

    def _resume_accept(self, listening: socket.socket) -> None:
        if self._loop is not None and listening in self._listeners:
            self._loop.add_reader(listening.fileno(), self._accept_burst, listening)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for listening in self._listeners:  # before uvicorn closes its own: stop accepting
            if self._loop is not None:
                self._loop.remove_reader(listening.fileno())
            listening.close()
        self._listeners.clear()
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or self._plane.draining or self._loop is None:
            super().handle_exit(sig, frame)
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._wake)
            return
        self._plane.drain()
        log.info("SIGTERM: draining (readiness false, new requests refused)")
        self._loop.call_soon_threadsafe(self._start_drain, sig, frame)

    def _start_drain(self, sig: int, frame: FrameType | None) -> None:
        async def drain() -> None:
            await asyncio.sleep(self._drain_delay)
            log.info("closing the listener; waiting for accepted requests")
            # Not handle_exit: uvicorn would re-raise SIGTERM after shutdown and exit 143.
            self.should_exit = True
            self._wake()

        self._drain_task = asyncio.get_running_loop().create_task(drain())

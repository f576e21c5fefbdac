"""The engine process of a server with `[server] workers` > 1: the one owner of the model
registry, the schedulers, the devices and their sessions (one CUDA context), so batches form across
every worker's requests.

Workers connect over a Unix socket and hand it, with their first message, a memfd of request slots
(`app.workers.wire`). The engine then pushes each connection its models' description (what
`/v2/models/{name}/config` reports) and, every `STATUS_SECONDS` under load (`IDLE_STATUS_SECONDS`
at light load and idle), their status: running, device
health, the load report and Triton's statistics, which readiness, `/v1/load`, the agent check and
the statistics route in every worker read. It answers each request in the order it finishes.
SIGTERM (sent by the supervisor once every worker has drained): stop accepting, finish what is
queued, close the devices, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import mmap
import os
import signal
import socket
import time
from functools import partial
from pathlib import Path
from typing import Any, cast

from app.dataplane.catalog import Models
from app.dataplane.plane import DataPlane
from app.workers.wire import (
    FrameReader,
    Outbox,
    error_message,
    frame,
    inline_bytes,
    layout_of,
    read_arrays,
    write_arrays,
)
from config.settings import Settings
from scheduler.batch import Scored

log = logging.getLogger(__name__)
STATUS_SECONDS = 0.1  # while work waits or requests arrive at BUSY_RATE or more
# Otherwise the status goes out less often: it is also the engine's heartbeat (a worker calls an
# engine silent for `link.STALE_SECONDS` hung), and every push wakes the engine and each worker
# (on the 2-core VM a push costs 0.5-1 ms of CPU from cold, which light load pays per request).
# Below BUSY_RATE with nothing waiting, a quarter second old load figure misleads no one.
IDLE_STATUS_SECONDS = 0.25
BUSY_RATE = 100.0  # requests/s
IDLE_METRICS_SECONDS = 1.0
HELLO_TIMEOUT_SECONDS = 5.0


def description(models: Models) -> dict[str, Any]:
    """Per model and version: the devices, the variant each runs and why, the batching."""
    described: dict[str, Any] = {}
    for serving in models.serving():
        version = serving.version
        described.setdefault(version.model, {})[str(version.number)] = {
            "devices": [[d.name, d.parallel_batches] for d in serving.scheduler.devices],
            "variants": {d: v.name for d, v in serving.variants.items()},
            "reasons": serving.reasons,
            "backends": serving.backends,
            "threads": serving.threads,
            "batching": dataclasses.asdict(serving.scheduler.batching),
        }
    return described


def status(models: Models) -> dict[str, Any]:
    """What readiness and the load figures read, per model and version. The load report and
    the statistics go as the flat dataclasses they are: orjson writes them (an infinite wait as
    null) in C, where `dataclasses.asdict` deep-copied each, every push."""
    reported: dict[str, Any] = {}
    for serving in models.serving():
        version = serving.version
        reported.setdefault(version.model, {})[str(version.number)] = {
            "running": serving.scheduler.running,
            "healthy": {d.name: d.healthy for d in serving.scheduler.devices},
            "load": serving.scheduler.load(),
            "served": serving.scheduler.served,
            "shadow": serving.shadow.document() if serving.shadow else None,
            # What each device serves now: self-acceleration may promote or demote a variant.
            "variants": {d: {**vars(v), "path": str(v.path)} for d, v in serving.variants.items()},
            "reasons": serving.reasons,
            "backends": serving.backends,
        }
    return reported


class WorkerConnection(asyncio.Protocol):
    """One worker: its requests in, their answers out, in the slots of its shared memory."""

    def __init__(self, engine: Engine, memory: mmap.mmap, slot_bytes: int) -> None:
        self.engine = engine
        self.memory = memoryview(memory)
        self.slot_bytes = slot_bytes
        self.reader = FrameReader()
        self.transport: asyncio.Transport | None = None
        self.outbox = Outbox()
        self.pending = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.outbox.transport = self.transport
        self.engine.connections.add(self)
        described = description(self.engine.plane.models)
        self.transport.write(frame({"op": "describe", "models": described}))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = self.outbox.transport = None
        self.engine.connections.discard(self)

    def send(self, message: dict[str, Any], inline: bytes = b"") -> None:
        if self.transport is not None:
            self.outbox.put(frame(message, inline))

    def data_received(self, data: bytes) -> None:
        try:
            for message, inline in self.reader.feed(data):
                if message["op"] == "infer":
                    self.infer(message, inline)
                else:
                    self.engine.control(self, message)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("a worker sent a malformed message (%s); closing its connection", exc)
            if self.transport is not None:
                self.transport.close()

    def slot(self, index: int) -> memoryview:
        return self.memory[index * self.slot_bytes : (index + 1) * self.slot_bytes]

    def infer(self, message: dict[str, Any], inline: bytes) -> None:
        request_id, slot = message["id"], message["slot"]
        try:
            buffer = inline if slot < 0 else self.slot(slot)
            inputs = read_arrays(buffer, message["inputs"], copy=False)
            future = self.engine.plane.submit_nowait(
                message["model"], message["version"], inputs, message["timeout"],
                message["priority"],
            )  # fmt: skip
        except Exception as exc:  # refused at once: say why, as the scheduler would have
            self.send(error_message(request_id, exc))
            return
        self.pending += 1
        self.engine.received += 1
        future.add_done_callback(partial(self.answer, request_id, slot))

    def answer(self, request_id: int, slot: int, future: asyncio.Future[Scored]) -> None:
        self.pending -= 1
        if self.transport is None:  # the worker is gone (or reconnected): its slots are not ours
            return
        if future.cancelled() or future.exception() is not None:
            error = future.exception() if not future.cancelled() else None
            self.send(error_message(request_id, error or RuntimeError("cancelled")))
            return
        scored = future.result()
        outputs = scored.outputs
        layout, total = layout_of(outputs)
        reply: dict[str, Any] = {
            "id": request_id, "outputs": layout, "devices": scored.devices,
            "queue": scored.queue_seconds, "compute": scored.compute_seconds,
        }  # fmt: skip
        if slot >= 0 and total <= self.slot_bytes:  # the inputs are spent: overwrite them
            write_arrays(outputs, layout, self.slot(slot))
            reply["inline"] = False
            self.send(reply)
            return
        reply["inline"] = True
        self.send(reply, inline_bytes(outputs, layout, total))


class Engine:
    def __init__(self, settings: Settings, plane: DataPlane) -> None:
        self.settings = settings
        self.plane = plane
        self.connections: set[WorkerConnection] = set()
        self._control_tasks: set[asyncio.Task[None]] = set()
        self.received = 0  # requests taken in since the last status push
        self._was_busy = False
        self._metrics_at = 0.0  # monotonic time the gauges were last refreshed
        self._pushed_at = time.monotonic()  # of the last status push

    def pending(self) -> int:
        return sum(c.pending for c in self.connections)

    def control(self, connection: WorkerConnection, message: dict[str, Any]) -> None:
        """The rare calls: fault injection ([faults] admin_enabled), forwarded by a worker."""
        if message["op"] == "fault":
            task = asyncio.get_running_loop().create_task(self._fault(connection, message))
            self._control_tasks.add(task)
            task.add_done_callback(self._control_tasks.discard)

    async def _fault(self, connection: WorkerConnection, message: dict[str, Any]) -> None:
        found = await self.plane.models.set_fault(message["device"], message["mode"])
        connection.send({"id": message["id"], "found": found})

    def tick(self) -> float:
        """Every worker's view of the status, and the scheduler gauges /metrics reports; the
        seconds until the next push."""
        now = time.monotonic()
        rate = self.received / max(now - self._pushed_at, 1e-3)
        busy = self.pending() > 0 or rate >= BUSY_RATE
        self.received, self._pushed_at = 0, now
        # Idle, the gauges change little (a device's health): refreshed once a second, not at
        # every heartbeat; busy, and once more after, at every push.
        if busy or self._was_busy or now - self._metrics_at >= IDLE_METRICS_SECONDS:
            self.plane.refresh_metrics(0)
            self._metrics_at = now
        self._was_busy = busy
        message = frame({"op": "status", "models": status(self.plane.models)})
        for connection in list(self.connections):
            connection.outbox.put(message)
        return STATUS_SECONDS if busy else IDLE_STATUS_SECONDS

    async def accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        slot_bytes = self.settings.server.shared_memory_slot_kib * 1024
        while True:
            connection, _ = await loop.sock_accept(listener)
            try:
                memory = await asyncio.to_thread(receive_memory, connection)
            except (OSError, ValueError) as exc:
                log.error("a worker's connection failed before its first message: %s", exc)
                connection.close()
                continue
            connection.setblocking(False)
            await loop.connect_accepted_socket(
                partial(WorkerConnection, self, memory, slot_bytes), connection
            )


def receive_memory(connection: socket.socket) -> mmap.mmap:
    """The worker's hello: the memfd of its request slots, mapped here."""
    connection.settimeout(HELLO_TIMEOUT_SECONDS)
    _, fds, _, _ = socket.recv_fds(connection, 1024, 1)
    if not fds:
        raise ValueError("no shared memory in the first message")
    try:
        return mmap.mmap(fds[0], os.fstat(fds[0]).st_size)
    finally:
        os.close(fds[0])


async def serve(settings: Settings, socket_path: Path, plane: DataPlane) -> None:
    """Start `plane` (its models in this process), then answer the workers until SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the supervisor decides when
    await plane.start()
    gc.collect()
    gc.freeze()
    engine = Engine(settings, plane)
    socket_path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path))
    listener.listen(256)
    listener.setblocking(False)
    accepting = asyncio.create_task(engine.accept(listener), name="engine-accept")
    log.info("engine ready")
    try:
        while not stop.is_set():
            pause = engine.tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)
    finally:
        accepting.cancel()
        listener.close()
        deadline = time.monotonic() + settings.server.graceful_shutdown_seconds
        while engine.pending() and time.monotonic() < deadline:  # what workers sent, answered
            await asyncio.sleep(0.005)
        await plane.close()
        log.info("engine stopped")

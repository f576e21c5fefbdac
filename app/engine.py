"""The engine process of a server with `[server] workers` > 1: the one owner of the model
registry, the schedulers, the devices and their sessions (one CUDA context), so batches form across
every worker's requests.

Workers connect over a Unix socket and hand it, with their first message, a memfd of request slots
(`app.engine_wire`). The engine then pushes each connection its models' description (what
`/v2/models/{name}/config` reports) and, every `STATUS_SECONDS`, their status: running, device
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
import math
import mmap
import os
import signal
import socket
import time
from functools import partial
from pathlib import Path
from typing import Any, cast

from prometheus_client import CollectorRegistry

from app.engine_wire import (
    FrameReader,
    Outbox,
    error_message,
    frame,
    inline_bytes,
    layout_of,
    read_arrays,
    write_arrays,
)
from app.registry import ModelRegistry, OpenedModel, load_failure_counter
from app.serving import Serving
from config.settings import Settings
from scheduler.batch import Scored
from scheduler.faults import FaultInjector
from scheduler.load import combine
from scheduler.metrics import SchedulerMetrics

log = logging.getLogger(__name__)
STATUS_SECONDS = 0.1
HELLO_TIMEOUT_SECONDS = 5.0


def description(models: ModelRegistry) -> dict[str, Any]:
    """Per model and version: the devices, the variant each runs and why, the batching."""
    described: dict[str, Any] = {}
    for name, model in models.models.items():
        for number, serving in model.versions.items():
            described.setdefault(name, {})[str(number)] = {
                "devices": [[d.name, d.parallel_batches] for d in serving.scheduler.devices],
                "variants": {d: v.name for d, v in serving.variants.items()},
                "reasons": serving.reasons,
                "backends": serving.backends,
                "batching": dataclasses.asdict(serving.scheduler.batching),
            }
    return described


def status(models: ModelRegistry) -> dict[str, Any]:
    """What readiness and the load figures read, per model and version."""
    reported: dict[str, Any] = {}
    for name, model in models.models.items():
        for number, serving in model.versions.items():
            load = dataclasses.asdict(serving.scheduler.load())
            if math.isinf(load["predicted_wait_seconds"]):
                load["predicted_wait_seconds"] = None  # JSON has no infinity
            reported.setdefault(name, {})[str(number)] = {
                "running": serving.scheduler.running,
                "healthy": {d.name: d.healthy for d in serving.scheduler.devices},
                "load": load,
                "stats": serving.stats,
            }
    return reported


def record(serving: Serving, rows: int, scored: Scored | None, seconds: float) -> None:
    """Triton's statistics of one version, kept here so every worker reports the whole server."""
    s = serving.stats
    if scored is None:
        s["failures"] = s.get("failures", 0) + 1
        return
    s["requests"] = s.get("requests", 0) + 1
    s["rows"] = s.get("rows", 0) + rows
    s["queue_ns"] = s.get("queue_ns", 0) + scored.queue_seconds * 1e9
    s["compute_ns"] = s.get("compute_ns", 0) + scored.compute_seconds * 1e9
    s["total_ns"] = s.get("total_ns", 0) + seconds * 1e9


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
        self.transport.write(frame({"op": "describe", "models": description(self.engine.models)}))

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
        serving = None
        try:
            serving = self.engine.models.get(message["model"], message["version"])
            buffer = inline if slot < 0 else self.slot(slot)
            inputs = read_arrays(buffer, message["inputs"], copy=False)
            future = serving.scheduler.submit_nowait(
                inputs, message["timeout"], message["priority"]
            )
        except Exception as exc:  # refused at once: say why, as the scheduler would have
            if serving is not None:
                record(serving, 0, None, 0.0)
            self.send(error_message(request_id, exc))
            return
        rows = len(next(iter(inputs.values())))
        self.pending += 1
        future.add_done_callback(
            partial(self.answer, request_id, slot, serving, rows, time.perf_counter())
        )

    def answer(self, request_id: int, slot: int, serving: Serving, rows: int, started: float,
               future: asyncio.Future[Scored]) -> None:  # fmt: skip
        self.pending -= 1
        if self.transport is None:  # the worker is gone (or reconnected): its slots are not ours
            return
        if future.cancelled() or future.exception() is not None:
            error = future.exception() if not future.cancelled() else None
            record(serving, rows, None, 0.0)
            self.send(error_message(request_id, error or RuntimeError("cancelled")))
            return
        scored = future.result()
        record(serving, rows, scored, time.perf_counter() - started)
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
    def __init__(self, settings: Settings, models: ModelRegistry,
                 metrics: SchedulerMetrics) -> None:  # fmt: skip
        self.settings = settings
        self.models = models
        self.metrics = metrics
        self.connections: set[WorkerConnection] = set()

    def pending(self) -> int:
        return sum(c.pending for c in self.connections)

    def control(self, connection: WorkerConnection, message: dict[str, Any]) -> None:
        """The rare calls: fault injection ([faults] admin_enabled), forwarded by a worker."""
        if message["op"] == "fault":
            found = [
                d.backend for s in self.models.serving() for d in s.scheduler.devices
                if d.name == message["device"] and isinstance(d.backend, FaultInjector)
            ]  # fmt: skip
            for backend in found:
                backend.set_mode(message["mode"])
            connection.send({"id": message["id"], "found": bool(found)})

    def tick(self) -> None:
        """Every worker's view of the status, and the scheduler gauges /metrics reports."""
        served = self.models.serving()
        for serving in served:
            if serving.scheduler.metrics is not None:
                serving.scheduler.metrics.refresh_devices(serving.scheduler.devices)
        if served:
            self.metrics.refresh_load(combine([s.scheduler.load() for s in served]))
        message = frame({"op": "status", "models": status(self.models)})
        for connection in list(self.connections):
            connection.outbox.put(message)

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


async def serve(settings: Settings, socket_path: Path, checked: list[OpenedModel]) -> None:
    registry = CollectorRegistry()
    scheduler_metrics = SchedulerMetrics(registry, settings.metrics.prefix)
    on_failure = load_failure_counter(registry, settings.metrics.prefix)
    models = ModelRegistry(settings, scheduler_metrics, on_failure, checked)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the supervisor decides when
    try:
        await models.start()
    except BaseException:
        await models.close()
        raise
    gc.collect()
    gc.freeze()
    engine = Engine(settings, models, scheduler_metrics)
    socket_path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path))
    listener.listen(256)
    listener.setblocking(False)
    accepting = asyncio.create_task(engine.accept(listener), name="engine-accept")
    served = [f"{s.version.model} version {s.version.number}" for s in models.serving()]
    log.info("engine ready: %s", ", ".join(served) or "no model loaded")
    try:
        while not stop.is_set():
            engine.tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STATUS_SECONDS)
    finally:
        accepting.cancel()
        listener.close()
        deadline = time.monotonic() + settings.server.graceful_shutdown_seconds
        while engine.pending() and time.monotonic() < deadline:  # what workers sent, answered
            await asyncio.sleep(0.005)
        await models.close()
        log.info("engine stopped")

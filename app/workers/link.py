"""An HTTP worker's side of the engine (`[server] workers` > 1): the connection, the slots of shared
memory its requests' arrays cross in, and what the app sees in place of a scheduler.

`RemoteScheduler` has the face of `scheduler.Scheduler` the app uses (submit, load, running,
devices, batching), so routes, admission, readiness and the load figures run unchanged; its load
and health are the engine's last status push (every `app.workers.engine.STATUS_SECONDS` under load,
less often at light load and idle). While the engine is away (it died; the supervisor restarts
it) the worker is not ready, new requests are refused with 503 and the requests it had sent fail
with a 503 that says so; the link reconnects.
An engine that stops pushing (its event loop hung or stopped) makes the worker not ready after
`STALE_SECONDS`, and each request it holds fails with 504 that long after its deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import mmap
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

from app.dataplane.catalog import READY, Catalog, ServedModel
from app.dataplane.errors import Forbidden
from app.dataplane.registry import OpenedModel, open_model, startup_names
from app.dataplane.serving import Serving
from app.workers.wire import (
    FrameReader,
    Outbox,
    error_of,
    frame,
    inline_bytes,
    layout_of,
    read_arrays,
    write_arrays,
)
from config.settings import Settings
from models.artifacts.servable import VariantFile
from scheduler.batch import Inputs, Scored
from scheduler.errors import DeadlineExceeded, NotReady, UnknownModel
from scheduler.faults import FaultMode
from scheduler.load import LoadReport
from scheduler.scheduler import HIGH, BatchingConfig
from scheduler.served import Served

log = logging.getLogger(__name__)
RECONNECT_SECONDS = 0.1
ENGINE_GONE = "the engine process exited (the supervisor restarts it)"
# An engine whose event loop stops (hung, stopped) sends no status: past this the worker is not
# ready, and a request it holds fails this long after its deadline, which the engine missed.
STALE_SECONDS = 1.0
Pending = tuple["asyncio.Future[Any]", int, "asyncio.TimerHandle | None"]  # future, slot, timer


class Slots:
    """Fixed slots in one memfd, the lowest free first (the pages in use stay few)."""

    def __init__(self, count: int, slot_bytes: int) -> None:
        self.slot_bytes = slot_bytes
        self.fd = os.memfd_create("recsys-worker-slots", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, count * slot_bytes)  # pages are only committed once written
        self.memory = memoryview(mmap.mmap(self.fd, count * slot_bytes))
        self.free = list(range(count - 1, -1, -1))

    def view(self, index: int) -> memoryview:
        return self.memory[index * self.slot_bytes : (index + 1) * self.slot_bytes]


@dataclass
class Status:
    running: bool = False
    healthy: dict[str, bool] = field(default_factory=dict)
    load: LoadReport = field(
        default_factory=lambda: LoadReport(0, 0, float("inf"), {}, [], 0.0, 0.0, 0.0, 0, True)
    )
    served: Served = field(default_factory=Served)  # what the engine's scheduler served
    shadow: dict[str, Any] | None = None  # its shadow's document ([shadow]), None: no shadow
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # device -> what it serves
    reasons: dict[str, str] = field(default_factory=dict)
    backends: dict[str, str] = field(default_factory=dict)


@dataclass
class ReportedShadow:
    """A version's shadow in the engine process, as its last status reported it."""

    status: Status

    def document(self) -> dict[str, Any]:
        return self.status.shadow or {"candidate": None}


class EngineLink:
    def __init__(self, settings: Settings, socket_path: Path) -> None:
        self.socket_path = socket_path
        # A slot for each request this worker may have in flight (its share of the limit).
        slot_bytes = settings.server.shared_memory_slot_kib * 1024
        self.slots = Slots(settings.admission.max_in_flight_requests, slot_bytes)
        self.transport: asyncio.Transport | None = None
        self.outbox = Outbox()
        self.described: dict[str, Any] | None = None
        self.statuses: dict[tuple[str, int], Status] = {}
        self.pending: dict[int, Pending] = {}
        self.last_status = 0.0  # monotonic time of the engine's last status push
        self.ids = itertools.count()
        self.connected = asyncio.Event()
        # To update in place when the engine comes back.
        self.servings: list[tuple[Serving, RemoteScheduler]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect, and keep reconnecting; returns once the engine described its models."""
        self._task = asyncio.create_task(self._keep_connected(), name="engine-link")
        await self.connected.wait()

    async def _keep_connected(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            lost = loop.create_future()
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.setblocking(False)
                await loop.sock_connect(sock, str(self.socket_path))
            except OSError:
                sock.close()
                await asyncio.sleep(RECONNECT_SECONDS)
                continue
            sock.setblocking(True)
            socket.send_fds(sock, [b"hello"], [self.slots.fd])
            sock.setblocking(False)
            await loop.create_unix_connection(partial(EngineProtocol, self, lost), sock=sock)
            await lost
            self.disconnected()
            await asyncio.sleep(RECONNECT_SECONDS)

    def disconnected(self) -> None:
        self.transport = self.outbox.transport = None
        self.connected.clear()
        for status in self.statuses.values():
            status.running = False
        pending, self.pending = self.pending, {}
        for future, slot, timer in pending.values():
            if timer is not None:
                timer.cancel()
            if slot >= 0:
                self.slots.free.append(slot)
            if not future.done():
                future.set_exception(NotReady(f"{ENGINE_GONE}; this request was not answered"))
        log.error("lost the engine: %s", ENGINE_GONE)

    def received(self, message: dict[str, Any], inline: bytes) -> None:
        op = message.get("op")
        if op == "status":
            self.update_status(message["models"])
        elif op == "describe":
            self.described = message["models"]
            for serving, scheduler in self.servings:
                describe(serving, scheduler, self.described)
            self.connected.set()
        else:
            self.answered(message, inline)

    @property
    def fresh(self) -> bool:
        """The engine's last status is recent: its event loop is turning."""
        return time.monotonic() - self.last_status < STALE_SECONDS

    def update_status(self, models: dict[str, Any]) -> None:
        self.last_status = time.monotonic()
        for name, versions in models.items():
            for number, reported in versions.items():
                status = self.statuses.setdefault((name, int(number)), Status())
                status.running = reported["running"]
                status.healthy = reported["healthy"]
                load = reported["load"]
                if load["predicted_wait_seconds"] is None:
                    load["predicted_wait_seconds"] = float("inf")
                status.load = LoadReport(**load)
                status.served = Served(**reported["served"])
                status.shadow = reported["shadow"]
                status.variants = reported["variants"]
                status.reasons, status.backends = reported["reasons"], reported["backends"]
        for serving, _ in self.servings:
            known = self.statuses.get((serving.version.model, serving.version.number))
            if known is not None:
                follow_variants(serving, known)

    def answered(self, message: dict[str, Any], inline: bytes) -> None:
        entry = self.pending.pop(message["id"], None)
        if entry is None:
            return
        future, slot, timer = entry
        if timer is not None:
            timer.cancel()
        try:
            if "error" in message:
                result: Any = error_of(message)
            elif "outputs" in message:
                source = inline if message["inline"] else self.slots.view(slot)
                outputs = read_arrays(source, message["outputs"], copy=True)
                result = Scored(outputs, tuple(message["devices"]), message["queue"],
                                message["compute"])  # fmt: skip
            else:
                result = message
        finally:
            if slot >= 0:
                self.slots.free.append(slot)
        if future.done():  # the caller went away; the slot is free again all the same
            return
        if isinstance(result, Exception):
            future.set_exception(result)
        else:
            future.set_result(result)

    def submit(self, model: str, version: int, inputs: Inputs, timeout_seconds: float | None,
               priority: int) -> asyncio.Future[Scored]:  # fmt: skip
        transport = self.transport
        if transport is None or transport.is_closing():
            raise NotReady(f"{ENGINE_GONE}; not connected to it yet")
        layout, total = layout_of(inputs)
        request_id = next(self.ids)
        slot = self.slots.free.pop() if total <= self.slots.slot_bytes and self.slots.free else -1
        message = {"op": "infer", "id": request_id, "model": model, "version": str(version),
                   "timeout": timeout_seconds, "priority": priority, "slot": slot,
                   "inputs": layout}  # fmt: skip
        if slot >= 0:
            write_arrays(inputs, layout, self.slots.view(slot))
            self.outbox.put(frame(message))
        else:
            self.outbox.put(frame(message, inline_bytes(inputs, layout, total)))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Scored] = loop.create_future()
        timer = None
        if timeout_seconds is not None:
            timer = loop.call_later(timeout_seconds + STALE_SECONDS, self.overdue, future,
                                    timeout_seconds)  # fmt: skip
        self.pending[request_id] = (future, slot, timer)
        return future

    @staticmethod
    def overdue(future: asyncio.Future[Scored], timeout_seconds: float) -> None:
        """The engine missed a deadline it owns: fail the request here. Its slot stays taken
        until the engine answers or the connection drops."""
        if not future.done():
            future.set_exception(DeadlineExceeded(
                f"deadline of {timeout_seconds * 1000:.0f} ms passed with no answer from the "
                "engine process (its event loop is not turning)"
            ))  # fmt: skip

    async def call(self, message: dict[str, Any]) -> dict[str, Any]:
        """A control call (fault injection) answered by the engine."""
        if self.transport is None:
            raise NotReady(f"{ENGINE_GONE}; not connected to it yet")
        request_id = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = (future, -1, None)
        self.outbox.put(frame({**message, "id": request_id}))
        return await asyncio.wait_for(future, 10)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.transport is not None:
            self.transport.close()


class EngineProtocol(asyncio.Protocol):
    def __init__(self, link: EngineLink, lost: asyncio.Future[None]) -> None:
        self.link = link
        self.lost = lost
        self.reader = FrameReader()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        link = self.link
        link.transport = link.outbox.transport = cast(asyncio.Transport, transport)  # uvloop's

    def data_received(self, data: bytes) -> None:
        for message, inline in self.reader.feed(data):
            self.link.received(message, inline)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


@dataclass
class RemoteDevice:
    name: str
    parallel_batches: int
    status: Status

    @property
    def healthy(self) -> bool:
        return self.status.healthy.get(self.name, False)

    def close(self) -> None:  # the engine owns the session
        pass


class RemoteScheduler:
    """A version's scheduler in the engine, as the data plane sees it (its `Scoring`)."""

    metrics = None  # the engine records the scheduler's metrics

    def __init__(self, link: EngineLink, model: str, version: int,
                 devices: Sequence[RemoteDevice], batching: BatchingConfig) -> None:  # fmt: skip
        self.link, self.model, self.version = link, model, version
        self.status = link.statuses.setdefault((model, version), Status())
        self.devices = list(devices)
        self.batching = batching

    @property
    def running(self) -> bool:
        link = self.link
        return link.transport is not None and link.fresh and self.status.running

    @property
    def served(self) -> Served:
        return self.status.served

    def load(self) -> LoadReport:
        return self.status.load

    def submit_nowait(self, inputs: Inputs, timeout_seconds: float | None = None,
                      priority: int = HIGH) -> asyncio.Future[Scored]:  # fmt: skip
        return self.link.submit(self.model, self.version, inputs, timeout_seconds, priority)

    async def drain(self, limit_seconds: float) -> None:
        pass

    async def stop(self) -> None:
        pass


def follow_variants(serving: Serving, status: Status) -> None:
    """The variants the engine's devices serve now, when they changed (a variant promoted or
    demoted there): this worker's config and metadata say what actually scores its requests."""
    names = {device: fields["name"] for device, fields in status.variants.items()}
    if not names or names == {d: v.name for d, v in serving.variants.items()}:
        return
    serving.variants = {
        device: VariantFile(**{**fields, "path": Path(fields["path"]),
                               "runtimes": tuple(fields["runtimes"])})
        for device, fields in status.variants.items()
    }  # fmt: skip
    serving.reasons, serving.backends = status.reasons, status.backends


def describe(serving: Serving, scheduler: RemoteScheduler, described: dict[str, Any]) -> None:
    """Set a version's devices, variants and reasons as the engine described them."""
    version = serving.version
    entry = described.get(version.model, {}).get(str(version.number))
    if entry is None:
        return
    scheduler.devices = [RemoteDevice(n, p, scheduler.status) for n, p in entry["devices"]]
    scheduler.batching = BatchingConfig(**entry["batching"])
    serving.variants = {d: version.variants[v] for d, v in entry["variants"].items()}
    serving.reasons, serving.backends = entry["reasons"], entry["backends"]
    serving.threads = entry["threads"]


class EngineModels(Catalog):
    """The models of an HTTP worker: the versions the engine serves, opened here for their
    signatures and feature tables (a worker parses, validates and looks features up), scored
    in the engine. What start-up loaded is what serves: no model control in a worker."""

    def __init__(self, settings: Settings, link: EngineLink,
                 checked: Sequence[OpenedModel] = ()) -> None:  # fmt: skip
        super().__init__(settings)
        self.link = link
        self._checked = {opened.name: opened for opened in checked}

    async def start(self) -> None:
        """Connect to the engine; serve what it describes of the start-up models."""
        await self.link.start()
        described = self.link.described or {}
        for name in startup_names(self.settings):
            opened = self._checked.pop(name, None)
            if opened is None:
                opened = await asyncio.to_thread(open_model, self.settings, name)
            if name not in described:
                raise UnknownModel(f"model {name!r}: the engine does not serve it")
            model = self.models.setdefault(name, ServedModel(name))
            for version in opened.versions:
                entry = described[name].get(str(version.number))
                if entry is None:
                    continue
                scheduler = RemoteScheduler(self.link, name, version.number, [],
                                            BatchingConfig(**entry["batching"]))  # fmt: skip
                ranker = await opened.ranker(version, self.settings)
                serving = Serving(version, scheduler, {}, ranker, ready=True,
                                  shadow=ReportedShadow(scheduler.status))  # fmt: skip
                describe(serving, scheduler, described)
                self.link.servings.append((serving, scheduler))
                model.versions[version.number] = serving
            model.state, model.fingerprint = READY, opened.fingerprint

    async def load(self, name: str) -> None:
        raise Forbidden("model control needs [server] workers = 1 (workers serve what start-up "
                        "loaded)")  # fmt: skip

    async def unload(self, name: str) -> None:
        await self.load(name)  # refused the same way

    async def set_fault(self, device: str, mode: FaultMode) -> bool:
        answer = await self.link.call({"op": "fault", "device": device, "mode": mode})
        return bool(answer["found"])

    def refresh_metrics(self, headroom_cap: int) -> None:
        pass  # the engine refreshes the gauges every status push; /metrics sums the processes

    async def close(self) -> None:
        for serving in self.serving():
            serving.ready = False
        await self.link.close()

"""An open-loop HTTP/1.1 load generator: requests leave on schedule whatever the server does.

A closed-loop client (locust, a pool of workers) waits for each answer before sending the next, so
a slow server slows the client down and the queueing delay never shows in its figures. Here request
i is due at start + i / rate and is written then, whatever is still outstanding; it never waits for
the server (no coordinated omission). Latency counts from the write, so the generator's own timer
lateness (uvloop's timers tick in milliseconds; reported as send_lag_p99) is not charged to the
server. Each request needs a free keep-alive connection; when all `connections` are busy the
request is counted as "unsent", so a too-small pool shows up instead of silently lowering the
offered rate.

Runs in its own process pinned to one core (`python -m bench.loadgen`, a JSON spec on stdin, a JSON
result on stdout) so that it competes with the server for nothing but that core. Raw asyncio
protocols on uvloop with pre-encoded requests: one core offers well over 5,000 requests/s.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import cast

import uvloop

GENERATOR_CPU = 1  # the benchmarks pin servers to core 0 (processes.SERVER_CPUS) and this to 1
UNSENT = -1  # no free connection at the due time
CLIENT_TIMEOUT = 0  # no answer within the client timeout, or the connection failed


@dataclass(frozen=True)
class LoadSpec:
    host: str
    port: int
    bodies: list[str]  # JSON bodies, used round-robin: request i sends bodies[i % len(bodies)]
    path: str
    rate: float  # requests per second
    seconds: float
    connections: int = 256
    client_timeout_seconds: float = 5.0
    headers: list[dict[str, str]] = field(default_factory=list)  # per body, when given
    paths: list[str] = field(default_factory=list)  # per body, when given (else `path`)
    cpu: int | None = None  # pin the generator to this core
    # False: start with no connections and open one whenever none is idle (up to `connections`),
    # as a burst of new clients would; latency then counts from the connect.
    preconnect: bool = True
    # How the bodies become bytes: "latin-1" carries binary bodies (V2's binary tensors) in str.
    body_encoding: str = "utf-8"


@dataclass
class LoadResult:
    offered: int
    seconds: float
    statuses: list[int]  # per request in schedule order: an HTTP status, UNSENT or CLIENT_TIMEOUT
    latencies: list[float]  # seconds from the write to the last byte of the answer
    send_lag_p99: float  # seconds the generator itself sent late: its own limit shows here


def encode(spec: LoadSpec) -> list[bytes]:
    encoded = []
    for index, body in enumerate(spec.bodies):
        data = body.encode(spec.body_encoding)
        headers = spec.headers[index] if spec.headers else {}
        head = [
            f"POST {spec.paths[index] if spec.paths else spec.path} HTTP/1.1",
            f"Host: {spec.host}:{spec.port}",
            "Content-Type: application/json",
            f"Content-Length: {len(data)}",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        encoded.append(("\r\n".join(head) + "\r\n\r\n").encode() + data)
    return encoded


class Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter and not self.waiter.done():
            self.waiter.set_result(CLIENT_TIMEOUT)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(self.buffer[:end]).lower()
        length = 0
        start = head.find(b"\r\ncontent-length:")  # a line of its own, not a longer name's end
        if start >= 0:
            line_end = head.find(b"\r\n", start + 2)
            length = int(head[start + 17 : line_end if line_end >= 0 else len(head)])
        if len(self.buffer) < end + 4 + length:
            return
        status = int(head[9:12])
        del self.buffer[: end + 4 + length]
        if not self.waiter.done():
            self.waiter.set_result(status)

    def send(self, request: bytes) -> asyncio.Future[int]:
        """Write `request` now; the future gets the answer's status."""
        self.waiter = asyncio.get_running_loop().create_future()
        if self.transport is None or self.closed:
            self.waiter.set_result(CLIENT_TIMEOUT)
        else:
            self.transport.write(request)
        return self.waiter

    async def answer(self, timeout: float) -> int:
        assert self.waiter is not None
        try:
            return await asyncio.wait_for(self.waiter, timeout)
        except TimeoutError:
            if self.transport is not None:
                self.transport.close()
            return CLIENT_TIMEOUT


async def generate(spec: LoadSpec) -> LoadResult:
    loop = asyncio.get_running_loop()
    requests = encode(spec)
    pool: list[Connection] = []  # idle connections, most recently used last

    async def connect() -> None:
        try:
            _, connection = await loop.create_connection(Connection, spec.host, spec.port)
        except OSError:
            return
        pool.append(connection)

    if spec.preconnect:
        await asyncio.gather(*(connect() for _ in range(spec.connections)))
    opened = len(pool)
    total = int(spec.rate * spec.seconds)
    statuses = [UNSENT] * total
    latencies = [0.0] * total
    lags: list[float] = []
    tasks: set[asyncio.Task[None]] = set()
    reconnects: set[asyncio.Task[None]] = set()

    async def settle(i: int, sent: float, connection: Connection) -> None:
        status = await connection.answer(spec.client_timeout_seconds)
        statuses[i], latencies[i] = status, time.perf_counter() - sent
        if connection.closed or status == CLIENT_TIMEOUT:
            await connect()
        else:
            pool.append(connection)

    async def send_on_new(i: int) -> None:
        sent = time.perf_counter()
        try:
            _, connection = await loop.create_connection(Connection, spec.host, spec.port)
        except OSError:
            statuses[i], latencies[i] = CLIENT_TIMEOUT, time.perf_counter() - sent
            return
        connection.send(requests[i % len(requests)])
        await settle(i, sent, connection)

    start = time.perf_counter()
    for i in range(total):
        due = start + i / spec.rate
        delay = due - time.perf_counter()
        if delay > 0.0005:  # sleep only when worth it; otherwise send what is due in a burst
            await asyncio.sleep(delay)
        # The server closes keep-alive connections idle for a while (uvicorn: 5 s); replace them
        # as a real client would, rather than count their loss against the server.
        while pool and pool[-1].closed:
            pool.pop()
            reconnects.add(task := loop.create_task(connect()))
            task.add_done_callback(reconnects.discard)
        if not pool and not spec.preconnect and opened < spec.connections:
            opened += 1
            lags.append(time.perf_counter() - due)
            tasks.add(task := loop.create_task(send_on_new(i)))
            task.add_done_callback(tasks.discard)
            continue
        if not pool:
            continue  # stays UNSENT
        connection = pool.pop()
        sent = time.perf_counter()
        connection.send(requests[i % len(requests)])
        lags.append(sent - due)
        task = loop.create_task(settle(i, sent, connection))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=spec.client_timeout_seconds + 1)
    for connection in pool:
        if connection.transport:
            connection.transport.close()
    lags.sort()
    lag = lags[int(0.99 * (len(lags) - 1))] if lags else 0.0
    return LoadResult(total, spec.seconds, statuses, latencies, lag)


def run_here(spec: LoadSpec) -> LoadResult:
    if spec.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {spec.cpu})
    return uvloop.run(generate(spec))


def run(spec: LoadSpec, timeout: float | None = None) -> LoadResult:
    """Run `spec` in a fresh generator process and return what it measured."""
    completed = subprocess.run(
        [sys.executable, "-m", "bench.loadgen"],
        input=json.dumps(asdict(spec)).encode(),
        capture_output=True,
        timeout=timeout or spec.seconds + spec.client_timeout_seconds + 60,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"load generator failed: {completed.stderr.decode()[-2000:]}")
    return LoadResult(**json.loads(completed.stdout))


def offer(port: int, bodies: list[str], rate: float, seconds: float,
          headers: list[dict[str, str]] | None = None, preconnect: bool = True,
          ) -> LoadResult:  # fmt: skip
    """/v1/rank at `rate` for `seconds` from the pinned generator core, 512 connections."""
    spec = LoadSpec("127.0.0.1", port, bodies, "/v1/rank", rate, seconds, connections=512,
                    headers=headers or [], cpu=GENERATOR_CPU, preconnect=preconnect)  # fmt: skip
    return run(spec)


def main() -> int:
    spec = LoadSpec(**json.loads(sys.stdin.read()))
    json.dump(asdict(run_here(spec)), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

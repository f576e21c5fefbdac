"""One pipelined connection to Redis on the event loop: the commands of every request of a turn
leave in one write, replies are parsed by hiredis (Redis's own C parser) as they arrive and
handed back in order. The first version used redis-py's asyncio client (a pooled connection, a
pipeline object and an awaited parse per reply) and checked rows one by one; a rank request then
cost some 500 us more CPU than it does now (docs/benchmarks.md, "Fresh features from Redis"), so
the hot path speaks RESP itself. redis-py still writes the rows (`python -m models
publish-features`) and drives the tests.

Failures are explicit and bounded: a lost connection fails what it was waiting for at once
(`StoreUnavailable("error")`), a new one is tried at most every `reconnect_seconds`, and at most
`max_pending` requests may wait for replies (beyond: `StoreUnavailable("busy")`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlsplit

import hiredis

Command = tuple[Any, ...]


class StoreUnavailable(Exception):
    """No reply: Redis down or unreachable (error), or too many requests waiting (busy)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def encode(commands: list[Command]) -> bytes:
    """Commands as RESP arrays of bulk strings."""
    parts: list[bytes] = []
    for command in commands:
        parts.append(b"*%d\r\n" % len(command))
        for arg in command:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class RespProtocol(asyncio.Protocol):
    """Replies, in order, to the futures waiting for them."""

    def __init__(self, on_lost: Callable[[], None]) -> None:
        self.reader = hiredis.Reader()
        self.waiting: deque[tuple[int, list[Any], asyncio.Future[list[Any]]]] = deque()
        self.transport: asyncio.Transport | None = None
        self.on_lost = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.waiting
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            count, replies, future = waiting[0]
            replies.append(reply)
            if len(replies) == count:
                waiting.popleft()
                if not future.done():  # a request that gave up waiting has its default rows
                    future.set_result(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        failure = StoreUnavailable("error", repr(exc) if exc else "connection closed")
        while self.waiting:
            future = self.waiting.popleft()[2]
            if not future.done():
                future.set_exception(failure)
        self.on_lost()


class RedisLink:
    def __init__(self, url: str, max_pending: int, connect_timeout: float,
                 reconnect_seconds: float = 0.5) -> None:  # fmt: skip
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "unix"):
            raise ValueError(f"{url}: a redis:// or unix:// URL is needed")
        self.url = url
        self.parts = parts
        self.database = int(parts.path.strip("/") or 0) if parts.scheme == "redis" else 0
        self.max_pending = max_pending
        self.connect_timeout = connect_timeout
        self.reconnect_seconds = reconnect_seconds
        self.protocol: RespProtocol | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.last_attempt = -reconnect_seconds
        self.last_failure = ""
        self.outgoing: list[Command] = []
        self.flush_scheduled = False

    def send(self, commands: list[Command]) -> asyncio.Future[list[Any]]:
        """The replies to `commands`, in order (an error reply is a hiredis.ReplyError)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        protocol = self.protocol
        if protocol is None or protocol.transport is None:
            self.reconnect()
            future.set_exception(StoreUnavailable("error", self.last_failure or "connecting"))
            return future
        if len(protocol.waiting) >= self.max_pending:
            future.set_exception(StoreUnavailable("busy"))
            return future
        protocol.waiting.append((len(commands), [], future))
        self.outgoing.extend(commands)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            loop.call_soon(self.flush)
        return future

    def flush(self) -> None:
        self.flush_scheduled = False
        commands, self.outgoing = self.outgoing, []
        protocol = self.protocol
        if protocol is not None and protocol.transport is not None and commands:
            protocol.transport.write(encode(commands))

    def reconnect(self) -> None:
        """Start connecting, unless a try is under way or the last was too recent."""
        now = time.monotonic()
        if self.connecting is not None or now - self.last_attempt < self.reconnect_seconds:
            return
        self.last_attempt = now
        self.connecting = asyncio.get_running_loop().create_task(self.connect())

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                factory = lambda: RespProtocol(self.lost)  # noqa: E731
                if self.parts.scheme == "unix":
                    _, protocol = await loop.create_unix_connection(factory, self.parts.path)
                else:
                    _, protocol = await loop.create_connection(
                        factory, self.parts.hostname or "127.0.0.1", self.parts.port or 6379
                    )
                await self.hello(protocol)
                self.protocol = protocol
                self.last_failure = ""
        except (OSError, TimeoutError, StoreUnavailable) as exc:
            self.last_failure = f"{self.url}: {exc!r}"
        finally:
            self.connecting = None

    async def hello(self, protocol: RespProtocol) -> None:
        """AUTH and SELECT as the URL asks; a refusal is a failed connection."""
        commands: list[Command] = []
        if self.parts.password:
            commands.append(("AUTH", *filter(None, (self.parts.username, self.parts.password))))
        if self.database:
            commands.append(("SELECT", self.database))
        if not commands or protocol.transport is None:
            return
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        protocol.waiting.append((len(commands), [], future))
        protocol.transport.write(encode(commands))
        for reply in await future:
            if isinstance(reply, Exception):
                protocol.transport.close()
                raise StoreUnavailable("error", str(reply))

    def lost(self) -> None:
        self.protocol = None

    async def start(self) -> None:
        """Connect once now (a failure is not fatal: requests degrade until Redis answers)."""
        self.last_attempt = -self.reconnect_seconds
        self.reconnect()
        if self.connecting is not None:
            await self.connecting

    async def close(self) -> None:
        if self.connecting is not None:
            self.connecting.cancel()
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.close()
        self.protocol = None

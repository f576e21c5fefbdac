"""What crosses between an HTTP worker process and the engine process (`[server] workers` > 1).

A message is a frame: an 8-byte head (the JSON's length, the inline bytes' length), an orjson
object, then inline bytes. A request's arrays do not travel in the frame: the worker writes them
into its slot of the shared memory it handed the engine at connection, and the message says where
each lies (name, dtype, shape, offset); the engine reads them in place and writes the outputs back
into the same slot. Arrays that do not fit a slot travel inline instead. Pure, so the layout is
unit-tested without processes.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import orjson

from scheduler import errors

HEAD = struct.Struct("<II")
ALIGN = 64  # each array starts on a cache line
MAX_MESSAGE_BYTES = 1 << 30  # a frame announcing more is a broken peer, not a request

Layout = list[tuple[str, str, list[int], int]]  # name, dtype, shape, offset


class Outbox:
    """Frames queued in one turn of the event loop leave in one write: a batch's answers (or a
    burst of requests) cost the peer one wake-up and one system call, not one each."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._frames: list[bytes] = []

    def put(self, data: bytes) -> None:
        if not self._frames:
            asyncio.get_running_loop().call_soon(self.flush)
        self._frames.append(data)

    def flush(self) -> None:
        frames, self._frames = self._frames, []
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(b"".join(frames))


def frame(message: Mapping[str, Any], inline: bytes = b"") -> bytes:
    body = orjson.dumps(message)
    return HEAD.pack(len(body), len(inline)) + body + inline


class FrameReader:
    """Frames out of a byte stream, however the stream splits them."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[dict[str, Any], bytes]]:
        buffer = self._buffer
        buffer += data
        start = 0
        while len(buffer) - start >= HEAD.size:
            length, inline = HEAD.unpack_from(buffer, start)
            if length + inline > MAX_MESSAGE_BYTES:
                raise ValueError(f"a frame of {length + inline} bytes: not a peer of this server")
            end = start + HEAD.size + length + inline
            if len(buffer) < end:
                break
            body_end = start + HEAD.size + length
            message = orjson.loads(memoryview(buffer)[start + HEAD.size : body_end])
            yield message, bytes(buffer[body_end:end])
            start = end
        del buffer[:start]


def layout_of(arrays: Mapping[str, np.ndarray]) -> tuple[Layout, int]:
    """Where each array goes, and the bytes they take in all."""
    layout: Layout = []
    offset = 0
    for name, array in arrays.items():
        offset = -(-offset // ALIGN) * ALIGN
        layout.append((name, array.dtype.str, list(array.shape), offset))
        offset += array.nbytes
    return layout, offset


def write_arrays(arrays: Mapping[str, np.ndarray], layout: Layout, buffer: memoryview) -> None:
    for (_, dtype, shape, offset), array in zip(layout, arrays.values(), strict=True):
        np.ndarray(shape, dtype, buffer, offset)[...] = array


def inline_bytes(arrays: Mapping[str, np.ndarray], layout: Layout, total: int) -> bytes:
    blob = bytearray(total)
    write_arrays(arrays, layout, memoryview(blob))
    return bytes(blob)


def read_arrays(buffer: memoryview | bytes, layout: Layout, copy: bool) -> dict[str, np.ndarray]:
    """The arrays `layout` places in `buffer`: views (the engine scores them in place), or with
    `copy` arrays of their own (the worker, before its slot is reused)."""
    arrays = {}
    for name, dtype, shape, offset in layout:
        array = np.ndarray(shape, dtype, buffer, offset)
        arrays[name] = array.copy() if copy else array
    return arrays


ERRORS: dict[str, type[errors.ServingError]] = {
    cls.__name__: cls
    for cls in (errors.InvalidInput, errors.UnknownModel, errors.Overloaded,
                errors.DeadlineExceeded, errors.NotReady, errors.BatchFailed)
}  # fmt: skip


def error_message(request_id: int, exc: BaseException) -> dict[str, Any]:
    """A failure as the worker re-raises it: the same error class, message and retry hint."""
    name = type(exc).__name__ if type(exc).__name__ in ERRORS else "BatchFailed"
    if isinstance(exc, ValueError):
        name = "InvalidInput"
    message: dict[str, Any] = {"id": request_id, "error": name, "message": str(exc) or repr(exc)}
    if isinstance(exc, errors.Overloaded):
        message["retry_after"] = exc.retry_after_seconds
    return message


def error_of(message: Mapping[str, Any]) -> errors.ServingError:
    cls = ERRORS.get(message["error"], errors.BatchFailed)
    if cls is errors.Overloaded:
        return errors.Overloaded(message["message"], message.get("retry_after", 1.0))
    return cls(message["message"])

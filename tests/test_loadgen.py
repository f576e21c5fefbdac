"""`bench.loadgen`'s reading of answers on a keep-alive connection: a header whose name ends in
"content-length" (V2's Inference-Header-Content-Length) is not the body's length."""

from __future__ import annotations

import asyncio

from bench.loadgen import Connection


def answer(body: bytes, status: int = 200) -> bytes:
    head = (f"HTTP/1.1 {status} OK\r\ninference-header-content-length: 3\r\n"
            f"content-length: {len(body)}\r\n\r\n")  # fmt: skip
    return head.encode() + body


async def test_answers_are_read_whole_one_after_another() -> None:
    connection = Connection()
    connection.transport = None
    loop = asyncio.get_running_loop()
    for status, body in [(200, b'{"a":1}\x00\x01\r\n\r\n\x02'), (503, b"{}")]:
        connection.waiter = loop.create_future()
        data = answer(body, status)
        connection.data_received(data[:20])
        assert not connection.waiter.done()
        connection.data_received(data[20:])
        assert connection.waiter.result() == status
    assert connection.buffer == bytearray()

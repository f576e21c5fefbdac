"""Hostile and broken clients on loopback, against a real server with short timeouts and small
caps: slow bodies cannot starve admission, slowloris heads and idle connections are closed,
heads are bounded, only HTTP/1.x is spoken. Counts and durations are bounded."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.app.servers import running_server, wait_for

pytestmark = pytest.mark.timeout(120)
DEVICE = [{"name": "cpu", "backend": "onnxruntime-cpu"}]
IN_FLIGHT = 4
MAX_CONNECTIONS = 48
MAX_BODY_BYTES = 65536
PIDS: dict[str, int] = {}  # the server process of each URL
BODY = json.dumps({"user_id": 1, "candidates": [1, 2, 3], "k": 2}).encode()


@pytest.fixture(scope="module")
def guarded(built_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = {
        "HTTP__HEADER_TIMEOUT_SECONDS": "1", "HTTP__BODY_TIMEOUT_SECONDS": "1",
        "HTTP__MAX_CONNECTIONS": str(MAX_CONNECTIONS), "HTTP__MAX_HEADER_BYTES": "8192",
        "HTTP__MAX_HEADER_COUNT": "50", "HTTP__MAX_REQUEST_LINE_BYTES": "2048",
        "HTTP__KEEP_ALIVE_TIMEOUT_SECONDS": "30",
        "LIMITS__MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "ADMISSION__MAX_IN_FLIGHT_REQUESTS": str(IN_FLIGHT),
    }  # fmt: skip
    log = tmp_path_factory.mktemp("guarded") / "server.log"
    with running_server(built_repository, settings, log, DEVICE) as (process, url):
        PIDS[url] = process.pid
        yield url


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def head(path: str = "/v1/rank", length: int = len(BODY), extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{extra}\r\n").encode()  # fmt: skip


def read_all(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes (the connection's timeout bounds it)."""
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


def status(answer: bytes) -> int:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert match, answer[:200]
    return int(match[1])


def error_of(answer: bytes) -> str:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower()
    message: str = json.loads(body)["error"]
    return message


def counter(url: str, name: str, reason: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    match = re.search(rf'^{name}_total{{reason="{reason}"}} (\S+)$', text, re.MULTILINE)
    return float(match[1]) if match else 0.0


def answered(url: str, count: int) -> list[int]:
    with httpx.Client(base_url=url, timeout=10) as client:
        headers = {"Content-Type": "application/json"}
        return [client.post("/v1/rank", content=BODY, headers=headers).status_code
                for _ in range(count)]  # fmt: skip


def test_slow_bodies_do_not_hold_the_in_flight_slots(guarded: str) -> None:
    # Twice the in-flight limit of requests whose bodies never finish arriving.
    slow = [connect(guarded) for _ in range(2 * IN_FLIGHT)]
    for connection in slow:
        connection.sendall(head() + BODY[:5])
    time.sleep(0.2)
    assert answered(guarded, 20) == [200] * 20  # the slow ones never counted against admission
    for connection in slow:  # each is answered 408 once its body is late, then closed
        answer = read_all(connection)
        assert status(answer) == 408, answer
        assert "body: not complete in 1 s" in error_of(answer)
        connection.close()


def test_slowloris_heads_are_closed_after_the_header_timeout(guarded: str) -> None:
    before = counter(guarded, "recsys_http_closed_connections", "header_timeout")
    connections = [connect(guarded) for _ in range(10)]
    stop = threading.Event()

    def drip() -> None:  # one byte of an endless head every 0.2 s on each connection
        line = b"POST /v1/rank HTTP/1.1\r\nX-Slow: " + b"a" * 100
        for byte in line:
            for connection in connections:
                with contextlib.suppress(OSError):  # closed by the server: the point
                    connection.send(bytes([byte]))
            if stop.wait(0.2):
                return

    thread = threading.Thread(target=drip)
    started = time.monotonic()
    thread.start()
    try:
        assert answered(guarded, 10) == [200] * 10
        answers = [read_all(c) for c in connections]
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        thread.join()
    assert {status(a) for a in answers} == {408}
    assert "request head: not complete in 1 s" in error_of(answers[0])
    assert elapsed < 5
    assert counter(guarded, "recsys_http_closed_connections", "header_timeout") >= before + 10
    for connection in connections:
        connection.close()


def test_idle_connections_beyond_the_cap_are_closed_oldest_first(guarded: str) -> None:
    before = counter(guarded, "recsys_http_closed_connections", "idle_evicted")
    idle = [connect(guarded) for _ in range(MAX_CONNECTIONS + 10)]

    def evicted_so_far() -> float:
        return counter(guarded, "recsys_http_closed_connections", "idle_evicted") - before

    wait_for(lambda: evicted_so_far() >= 10, 10, "10 idle connections closed for new ones")
    # Real clients still get through: each new connection closes the longest-idle one.
    assert answered(guarded, 5) == [200] * 5
    evicted = counter(guarded, "recsys_http_closed_connections", "idle_evicted") - before
    assert evicted >= 10
    idle[0].settimeout(2)
    assert idle[0].recv(1) == b""  # the oldest was closed (with nothing to answer)
    for connection in idle:
        connection.close()


def test_the_cap_with_none_idle_refuses_the_new_connection(guarded: str) -> None:
    busy = [connect(guarded) for _ in range(MAX_CONNECTIONS + 2)]
    try:
        for connection in busy:
            connection.sendall(b"GET /v2/health/live HTTP/1.1\r\n")  # a head begun: not idle
        time.sleep(0.3)
        with connect(guarded) as extra:
            answer = read_all(extra)
        assert status(answer) == 503
        assert error_of(answer) == "too many open connections"
    finally:
        for connection in busy:
            connection.close()


MANY_HEADERS = b"".join(b"X-%d: 1\r\n" % i for i in range(60))
CHUNKED = head(extra="Transfer-Encoding: chunked\r\n").replace(b"Content-Length: 47\r\n", b"")
CHUNKS = b"".join(b"4000\r\n" + b" " * 0x4000 + b"\r\n" for _ in range(5))
BAD_HEADS = {
    "long-target": (b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "target"),
    "many-headers": (b"GET / HTTP/1.1\r\nHost: x\r\n" + MANY_HEADERS + b"\r\n", 431, "50 header"),
    "big-header": (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431,
                   "8192 bytes"),
    "http2": (b"GET /v2/health/live HTTP/2.0\r\nHost: x\r\n\r\n", 505, "HTTP/2.0"),
    "http09": (b"GET /v2/health/live HTTP/0.9\r\nHost: x\r\n\r\n", 505, "HTTP/0.9"),
    "no-host": (b"GET /v2/health/live HTTP/1.1\r\n\r\n", 400, "Host: required"),
    "garbage": (b"GARBAGE\r\n\r\n", 400, "not a valid HTTP/1.1 request"),
    "content-length": (head(length=MAX_BODY_BYTES + 1), 413, f"limit of {MAX_BODY_BYTES} bytes"),
    "chunked": (CHUNKED + CHUNKS, 413, f"limit of {MAX_BODY_BYTES} bytes"),
}  # fmt: skip


@pytest.mark.parametrize(("request_bytes", "expected", "message"), BAD_HEADS.values(),
                         ids=BAD_HEADS.keys())  # fmt: skip
def test_bad_heads_get_a_json_error_and_a_close(
    guarded: str, request_bytes: bytes, expected: int, message: str
) -> None:
    with connect(guarded) as connection:
        connection.sendall(request_bytes)
        answer = read_all(connection)  # returns: the server closed the connection
    assert status(answer) == expected, answer[:300]
    assert message in error_of(answer)


def test_http10_without_host_is_still_served(guarded: str) -> None:
    with connect(guarded) as connection:
        connection.sendall(b"GET /v2/health/live HTTP/1.0\r\n\r\n")
        answer = read_all(connection)
    assert answer.startswith(b"HTTP/1.1 200 ")


def test_unfinished_huge_header_lines_do_not_grow_the_server(guarded: str) -> None:
    before = resident_bytes(PIDS[guarded])
    connections = [connect(guarded) for _ in range(16)]
    answers = []
    for connection in connections:
        with contextlib.suppress(OSError):  # closed by the server part-way: the point
            connection.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (2 << 20))
        answers.append(read_all(connection))
        connection.close()
    assert {status(a) for a in answers} == {431}
    assert resident_bytes(PIDS[guarded]) - before < 64 << 20  # 16 x 2 MB heads were never held


def resident_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE)
    assert match, status
    return int(match[1]) * 1024


def test_complete_requests_before_bytes_that_are_not_http_are_answered_first(guarded: str) -> None:
    """Three requests pipelined in one write, then garbage: three answers in order, then 400."""
    request = head() + BODY
    live = b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with connect(guarded) as connection:
        connection.sendall(request + live + request + b"\x16\x03\x01 not HTTP at all\r\n\r\n")
        received = read_all(connection)
    statuses = [int(s) for s in re.findall(rb"HTTP/1\.1 (\d{3}) ", received)]
    assert statuses == [200, 200, 200, 400], received[-400:]
    assert received.count(b'"items"') == 2 and b'{"live":true}' in received
    assert b"not a valid HTTP/1.1 request" in received

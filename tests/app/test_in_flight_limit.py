"""The in-flight limit: with `max_in_flight_requests` inference requests in progress (held on a
stalled device), the next one is refused at once, before its body is parsed; health and metrics
still answer; the held requests finish once the device is released."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from app.assembly import in_process
from app.http.hot import HotRoutes
from app.serve import rest_app
from bench.processes import ADMIN_HEADERS, ADMIN_TOKEN
from config.settings import load_settings
from tests.app.servers import running_server

pytestmark = pytest.mark.timeout(120)
DEVICE = [{"name": "cpu", "backend": "onnxruntime-cpu"}]


def pipelined_statuses(url: str, body: dict[str, object]) -> list[int]:
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    post = (f"POST /v1/rank HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data  # fmt: skip
    get = f"GET /v2/health/live HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(post + get + post)
        received = b""
        while received.count(b"HTTP/1.1 ") < 3 or not received.endswith((b"}", b"true")):
            chunk = connection.recv(65536)
            assert chunk, f"connection closed after {received!r}"
            received += chunk
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", received)]


def test_requests_beyond_the_in_flight_limit_are_refused_at_once(
    built_repository: Path, tmp_path: Path
) -> None:
    settings = {
        "FAULTS__ADMIN_ENABLED": "true", "FAULTS__ADMIN_TOKEN": ADMIN_TOKEN,
        "FAULTS__BATCH_TIMEOUT_MS": "30000",
        "FAULTS__COOL_DOWN_SECONDS": "0.2", "FAULTS__PROBE_INTERVAL_SECONDS": "0.1",
        "ADMISSION__DEFAULT_TIMEOUT_MS": "30000", "ADMISSION__MAX_IN_FLIGHT_REQUESTS": "2",
    }  # fmt: skip
    body = {"user_id": 1, "candidates": [1, 2, 3], "k": 2}
    log = tmp_path / "server.log"
    with (
        running_server(built_repository, settings, log, DEVICE) as (_, url),
        httpx.Client(base_url=url, timeout=60, headers=ADMIN_HEADERS) as client,
    ):
        assert client.post("/v1/rank", json=body).status_code == 200
        anonymous = httpx.post(f"{url}/admin/faults/cpu", json={"mode": "stall"})
        assert anonymous.status_code == 401 and "bearer token" in anonymous.json()["error"]
        assert (
            client.post(
                "/admin/faults/cpu", json={"mode": "stall"}, headers=ADMIN_HEADERS
            ).status_code
            == 200
        )
        held: list[int] = []

        def hold() -> None:
            held.append(httpx.post(f"{url}/v1/rank", json=body, timeout=60).status_code)

        threads: list[threading.Thread] = []

        def start_holding() -> None:
            threads.append(threading.Thread(target=hold))
            threads[-1].start()

        start_holding()
        start_holding()
        # Once two held requests are in progress, a request must be refused unread. Any request
        # in progress takes a place, this loop's own /v1/load too: a held request that arrived
        # while one ran was refused (503), and another takes its turn.
        deadline = time.monotonic() + 20
        while client.get("/v1/load").json()["in_flight_requests"] < 2:
            assert time.monotonic() < deadline, f"the held requests never held: {held}"
            if held.count(503) > len(threads) - 2:
                start_holding()
            time.sleep(0.05)
        started = time.perf_counter()
        refused = client.post("/v1/rank", content=b"not even parsed")
        elapsed = time.perf_counter() - started
        assert refused.status_code == 503, refused.text
        assert "too many requests in progress" in refused.json()["error"]
        assert refused.headers["Retry-After"] == "1"
        assert elapsed < 1.0
        assert client.get("/v2/health/live").status_code == 200
        # Refused as soon as its headers are parsed, its body skipped: the requests after it on
        # the same connection (pipelined in one write) are answered, in order.
        assert pipelined_statuses(url, body) == [503, 200, 503]
        assert 'reason="in_flight"' in client.get("/metrics").text
        # Not an inference request: the limit leaves it alone.
        assert (
            client.post(
                "/admin/faults/cpu", json={"mode": "none"}, headers=ADMIN_HEADERS
            ).status_code
            == 200
        )
        for thread in threads:
            thread.join(timeout=60)
        assert len(held) == len(threads)  # answered (the stalled batch itself fails), none hangs
        deadline = time.monotonic() + 10  # the device is back after its cool-down and a probe
        while (answer := client.post("/v1/rank", json=body)).status_code != 200:
            assert time.monotonic() < deadline, f"the device never came back: {answer.text}"
            time.sleep(0.1)


def test_a_burst_read_at_once_cannot_slip_past_the_limit(
    built_repository: Path, tmp_path: Path
) -> None:
    """Requests on many connections written at once are read in one turn of the event loop: each
    one admitted is counted at once, so no more than the limit are held, the rest refused."""
    limit = 4
    settings = {
        "FAULTS__ADMIN_ENABLED": "true", "FAULTS__ADMIN_TOKEN": ADMIN_TOKEN,
        "FAULTS__BATCH_TIMEOUT_MS": "10000", "ADMISSION__DEFAULT_TIMEOUT_MS": "30000",
        "ADMISSION__MAX_IN_FLIGHT_REQUESTS": str(limit),
    }  # fmt: skip
    body = json.dumps({"user_id": 1, "candidates": [1, 2, 3], "k": 2}).encode()
    with (
        running_server(built_repository, settings, tmp_path / "server.log", DEVICE) as (_, url),
        httpx.Client(base_url=url, timeout=60, headers=ADMIN_HEADERS) as client,
    ):
        assert client.post("/admin/faults/cpu", json={"mode": "stall"}).status_code == 200
        host, port = url.removeprefix("http://").split(":")
        request = (f"POST /v1/rank HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body  # fmt: skip
        connections = [socket.create_connection((host, int(port)), timeout=1) for _ in range(20)]
        for connection in connections:
            connection.sendall(request)
        refused = held = 0
        for connection in connections:
            try:
                answer = connection.recv(65536)
                refused += answer.startswith(b"HTTP/1.1 503 ")
            except TimeoutError:
                held += 1  # admitted: waiting on the stalled device
        assert (held, refused) == (limit, 20 - limit)
        assert client.post("/admin/faults/cpu", json={"mode": "none"}).status_code == 200
        for connection in connections:
            connection.close()


@pytest.mark.parametrize("hot", [False, True], ids=["fastapi", "hot-routes"])
async def test_under_any_asgi_server_the_app_applies_the_same_limit(
    built_repository: Path, hot: bool
) -> None:
    """Without the guarded protocol (here httpx's ASGITransport, the app served in-process) the
    admission middleware, or the hot routes' layer in front of it, counts and refuses by the
    same rule."""
    settings = load_settings(
        model={"repository": built_repository},
        devices=DEVICE,
        faults={"admin_enabled": True, "admin_token": ADMIN_TOKEN, "batch_timeout_ms": 30000},
        admission={"max_in_flight_requests": 1, "default_timeout_ms": 30000},
    )
    assembled = in_process(settings)
    app = rest_app(settings, assembled)
    served = HotRoutes(app, assembled.latency, 503) if hot else app
    body = {"user_id": 1, "candidates": [1, 2, 3], "k": 2}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(served),
            base_url="http://app",
            headers=ADMIN_HEADERS,
            timeout=60,
        ) as client,  # fmt: skip
    ):
        assert (await client.post("/v1/rank", json=body)).status_code == 200
        stalled = await client.post("/admin/faults/cpu", json={"mode": "stall"})
        assert stalled.status_code == 200
        held = asyncio.create_task(client.post("/v1/rank", json=body))
        while app.state.plane.admission.in_flight < 1:
            await asyncio.sleep(0.01)
        refused = await client.post("/v1/rank", json=body)
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1"
        assert (await client.get("/v2/health/live")).status_code == 200
        await client.post("/admin/faults/cpu", json={"mode": "none"})
        answer = await held  # answered, not hung: the stalled batch itself fails
        assert answer.status_code == 500 and "injected stall" in answer.json()["error"]
        assert app.state.plane.admission.in_flight == 0

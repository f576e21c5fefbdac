"""A real server for the HTTP tests: `python -m app` in its own process on a free loopback port,
serving the short build of the model repository on two CPU devices (OpenVINO and ONNX Runtime)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.app.servers import free_port, running_server

MAX_BODY_BYTES = 1_000_000
MAX_CANDIDATES = 3000


@pytest.fixture(scope="session")
def agent_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def server(
    built_repository: Path, tmp_path_factory: pytest.TempPathFactory, agent_port: int
) -> Iterator[str]:
    settings = {
        "LIMITS__MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "LIMITS__MAX_CANDIDATES": str(MAX_CANDIDATES),
        "LOAD_BALANCING__AGENT_CHECK_PORT": str(agent_port),
        # Generous deadlines: admission is tested with explicit short ones.
        "ADMISSION__DEFAULT_TIMEOUT_MS": "10000",
    }
    log = tmp_path_factory.mktemp("server") / "server.log"
    with running_server(built_repository, settings, log) as (_, url):
        yield url


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30) as c:
        yield c

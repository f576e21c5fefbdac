"""A real server: `python -m app` in its own process on a free loopback port, serving the short
build of the model repository on two CPU devices (OpenVINO and ONNX Runtime)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT

DEVICES = [
    {"name": "cpu-openvino", "backend": "openvino-cpu"},
    {"name": "cpu-onnxruntime", "backend": "onnxruntime-cpu"},
]
MAX_BODY_BYTES = 1_000_000
MAX_CANDIDATES = 3000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def agent_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def server(
    built_repository: Path, tmp_path_factory: pytest.TempPathFactory, agent_port: int
) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RECSYS_MODEL__REPOSITORY": str(built_repository),
        "RECSYS_DEVICES": json.dumps(DEVICES),
        "RECSYS_LIMITS__MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "RECSYS_LIMITS__MAX_CANDIDATES": str(MAX_CANDIDATES),
        "RECSYS_LOAD_BALANCING__AGENT_CHECK_PORT": str(agent_port),
    }
    log = tmp_path_factory.mktemp("server") / "server.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "--port", str(port)],
            cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server not ready in 90 s:\n" + log.read_text()
            time.sleep(0.2)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30) as c:
        yield c

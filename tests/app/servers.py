"""Starting real server processes for the tests: `python -m app` on a free loopback port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import ROOT

DEVICES = [
    {"name": "cpu-openvino", "backend": "openvino-cpu"},
    {"name": "cpu-onnxruntime", "backend": "onnxruntime-cpu"},
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path | None = None) -> None:
    deadline = time.monotonic() + 90
    while True:
        details = log.read_text() if log and log.exists() else ""
        assert process.poll() is None, f"{url} exited:\n{details}"
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} not ready in 90 s:\n{details}"
        time.sleep(0.2)


def start_server(
    repository: Path, settings: dict[str, str], log: Path, devices: list[dict[str, str]] = DEVICES
) -> tuple[subprocess.Popen[bytes], str]:
    """A server on a free port with RECSYS_* `settings`; returns once it is ready."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RECSYS_MODEL__REPOSITORY": str(repository),
        "RECSYS_DEVICES": json.dumps(devices),
        **{f"RECSYS_{key}": value for key, value in settings.items()},
    }
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "--port", str(port)],
            cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log)
    except BaseException:
        stop(process)
        raise
    return process, url


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


@contextmanager
def running_server(
    repository: Path, settings: dict[str, str], log: Path, devices: list[dict[str, str]] = DEVICES
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    process, url = start_server(repository, settings, log, devices)
    try:
        yield process, url
    finally:
        stop(process)

"""Starting real server processes for the tests: `python -m app` on a free loopback port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import processes
from bench.processes import free_port, stop, wait_ready
from tests.conftest import ROOT

__all__ = ["free_port", "running_server", "start_server", "stop", "wait_for", "wait_ready"]

DEVICES = [
    {"name": "cpu-openvino", "backend": "openvino-cpu"},
    {"name": "cpu-onnxruntime", "backend": "onnxruntime-cpu"},
]


def start_server(
    repository: Path,
    settings: dict[str, str],
    log: Path,
    devices: list[dict[str, str]] | None = DEVICES,
) -> tuple[subprocess.Popen[bytes], str]:
    """A server on a free port with RECSYS_* `settings`; returns once it is ready. `devices`
    None: the default devices, as a user gets them."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RECSYS_MODEL__REPOSITORY": str(repository),
        **({"RECSYS_DEVICES": json.dumps(devices)} if devices is not None else {}),
        **{f"RECSYS_{key}": value for key, value in settings.items()},
    }
    command = [sys.executable, "-m", "app", "--port", str(port)]
    return processes.start(command, port, env, log)


@contextmanager
def running_server(
    repository: Path,
    settings: dict[str, str],
    log: Path,
    devices: list[dict[str, str]] | None = DEVICES,
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    process, url = start_server(repository, settings, log, devices)
    try:
        yield process, url
    finally:
        stop(process)


def wait_for(condition: Callable[[], object], seconds: float, what: str) -> None:
    """Return once `condition()` holds; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {seconds:g} s"
        time.sleep(0.05)

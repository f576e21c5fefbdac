"""Server processes on loopback for benchmarks and tests: start on a free port, wait until ready,
stop with SIGTERM (then SIGKILL)."""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The model a benchmark compares settings on stays as dropped in (self-acceleration would swap
# it for a faster variant partway through a run; `bench.self_acceleration` measures that).
AS_DROPPED_IN = {"RECSYS_SELF_ACCELERATION__ENABLED": "false"}
SERVER_CPUS = {0}  # the server under test; the load generator has core 1 (loadgen.GENERATOR_CPU)
_HANDED_OUT: collections.deque[int] = collections.deque(maxlen=1024)


def free_port() -> int:
    """A free loopback port, none this process handed out lately: the kernel can give the same
    one to two calls in a row, and a server's HTTP and gRPC ports must differ."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.append(port)
            return port


def post_json(url: str, body: str, timeout: float = 30, headers: dict[str, str] | None = None,
              ) -> bytes:  # fmt: skip
    headers = {"Content-Type": "application/json", **(headers or {})}
    request = urllib.request.Request(url, body.encode(), headers)
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        content: bytes = answer.read()
        return content


ADMIN_TOKEN = "benchmark-admin-token"  # for the fault endpoints of a server on loopback
ADMIN_SETTINGS = {"RECSYS_FAULTS__ADMIN_ENABLED": "true", "RECSYS_FAULTS__ADMIN_TOKEN": ADMIN_TOKEN}
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def is_ready(url: str, ready_path: str = "/v2/health/ready") -> bool:
    try:
        with urllib.request.urlopen(f"{url}{ready_path}", timeout=1) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path | None = None,
               seconds: float = 90, ready_path: str = "/v2/health/ready") -> None:  # fmt: skip
    deadline = time.monotonic() + seconds
    while not is_ready(url, ready_path):
        details = log.read_text()[-5000:] if log and log.exists() else ""
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited:\n{details}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} not ready in {seconds:.0f} s:\n{details}")
        time.sleep(0.2)


def start(command: Sequence[str], port: int, env: Mapping[str, str], log: Path,
          cpus: set[int] | None = None, cwd: Path = ROOT, ready_path: str = "/v2/health/ready",
          ) -> tuple[subprocess.Popen[bytes], str]:  # fmt: skip
    """Start `command` (which must listen on 127.0.0.1:`port`) in `cwd`, pinned to `cpus` when
    given, and return once it answers `ready_path`."""
    with log.open("w") as output:
        process = subprocess.Popen(
            list(command), cwd=cwd, env=dict(env), stdout=output, stderr=subprocess.STDOUT
        )
    if cpus:  # before the interpreter has started its threads: they inherit it
        os.sched_setaffinity(process.pid, cpus)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log, ready_path=ready_path)
    except BaseException:
        stop(process)
        raise
    return process, url


def descendants(pid: int) -> list[int]:
    """Every process under `pid`, children before theirs."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        found += [int(c) for c in children]
        stack += [int(c) for c in children]
    return found


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 30 s; any of its processes that outlive it are killed (a
    server's workers must not keep a core busy for the next measurement)."""
    left = descendants(process.pid)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextmanager
def running(
    command: Sequence[str], port: int, env: Mapping[str, str], log: Path,
    cpus: set[int] | None = None, cwd: Path = ROOT, ready_path: str = "/v2/health/ready",
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:  # fmt: skip
    process, url = start(command, port, env, log, cpus, cwd, ready_path)
    try:
        yield process, url
    finally:
        stop(process)

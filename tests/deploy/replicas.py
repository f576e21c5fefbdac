"""Live replicas on loopback for the deployment tests: servers on the quick build, each with one
ONNX Runtime CPU device and its own HAProxy agent-check port, and client load to drive them."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from types import TracebackType

import httpx

from tests.app.servers import free_port, start_server, stop
from tests.prometheus_text import value

DEVICES = [{"name": "cpu", "backend": "onnxruntime-cpu"}]
RANK = {"user_id": 1, "k": 10}


@dataclass
class Replica:
    name: str
    process: Popen[bytes]
    url: str
    agent_port: int

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def ranked(self) -> float:
        """/v1/rank requests this replica answered 200, from its own /metrics."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        count = value(text, "recsys_request_duration_seconds_count", endpoint="/v1/rank",
                      status="200")  # fmt: skip
        return count or 0.0


@contextmanager
def replicas(repository: Path, count: int, logs: Path, settings: dict[str, str]
             ) -> Iterator[list[Replica]]:  # fmt: skip
    """`count` ready replicas with RECSYS_* `settings`; each stopped (SIGTERM) at the end."""
    started: list[Replica] = []
    try:
        for index in range(count):
            agent = free_port()
            options = {**settings, "LOAD_BALANCING__AGENT_CHECK_PORT": str(agent)}
            name = f"replica-{index}"
            process, url = start_server(repository, options, logs / f"{name}.log", DEVICES)
            started.append(Replica(name, process, url, agent))
        yield started
    finally:
        for replica in started:
            stop(replica.process)


class Load:
    """`clients` threads posting /v1/rank to `urls` (client i to urls[i % len]) until the block
    ends or `limit` requests were sent; `statuses` counts the answers (0: no answer)."""

    def __init__(self, urls: Sequence[str], clients: int, limit: int = 100_000) -> None:
        self.statuses: Counter[int] = Counter()
        self._urls, self._limit, self._sent = list(urls), limit, 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]

    def _client(self, index: int) -> None:
        with httpx.Client(base_url=self._urls[index % len(self._urls)], timeout=30) as client:
            while not self._stop.is_set():
                with self._lock:  # claim one of the `limit` requests before sending it
                    if self._sent >= self._limit:
                        self._stop.set()
                        return
                    self._sent += 1
                try:
                    status = client.post("/v1/rank", json=RANK).status_code
                except httpx.TransportError:
                    status = 0
                with self._lock:
                    self.statuses[status] += 1

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:  # fmt: skip
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def wait(self, seconds: float) -> None:
        """Until all `limit` requests were answered (or `seconds` passed)."""
        self._stop.wait(seconds)
        for thread in self._threads:
            thread.join(timeout=seconds)

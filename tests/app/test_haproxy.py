"""Two real replicas behind a real HAProxy (deploy/haproxy.cfg) on loopback: traffic moves away
from an overloaded replica, and a replica drained with SIGTERM loses no request."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import debian
from tests.app.servers import free_port, start_server, stop, wait_for, wait_ready
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(300)
DEVICES = [{"name": "cpu", "backend": "onnxruntime-cpu"}]
MAX_IN_FLIGHT = 8


def haproxy_binary() -> str:
    return debian.binary("haproxy", "haproxy")


def rank_count(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "recsys_request_duration_seconds_count" and sample.labels == {
                "endpoint": "/v1/rank", "status": "200",
            }:  # fmt: skip
                return float(sample.value)
    return 0.0


@pytest.fixture
def cluster(
    built_repository: Path, tmp_path: Path
) -> Iterator[tuple[str, list[str], list[subprocess.Popen[bytes]]]]:
    binary = haproxy_binary()
    agents, frontend = [free_port(), free_port()], free_port()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        urls = []
        for index, agent in enumerate(agents):
            settings = {
                "LOAD_BALANCING__AGENT_CHECK_PORT": str(agent),
                "ADMISSION__MAX_IN_FLIGHT_REQUESTS": str(MAX_IN_FLIGHT),
                "SERVER__DRAIN_DELAY_SECONDS": "1.5",
                "ADMISSION__DEFAULT_TIMEOUT_MS": "10000",
            }
            log = tmp_path / f"replica{index}.log"
            process, url = start_server(built_repository, settings, log, DEVICES)
            processes.append(process)
            urls.append(url)
        ports = [int(url.rsplit(":", 1)[1]) for url in urls]
        config = (ROOT / "deploy" / "haproxy.cfg").read_text()
        for old, new in (("8080", frontend), ("8001", ports[0]), ("8002", ports[1]),
                         ("9001", agents[0]), ("9002", agents[1])):  # fmt: skip
            config = config.replace(f":{old}", f":{new}").replace(
                f"agent-port {old}", f"agent-port {new}"
            )
        (tmp_path / "haproxy.cfg").write_text(config)
        proxy = subprocess.Popen(
            [binary, "-db", "-f", str(tmp_path / "haproxy.cfg")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        processes.append(proxy)
        front = f"http://127.0.0.1:{frontend}"
        wait_ready(front, proxy)
        counts = [rank_count(u) for u in urls]

        def both_up() -> bool:  # HAProxy routes to each replica (rise 2 at 500 ms)
            httpx.post(f"{front}/v1/rank", json={"user_id": 1, "k": 3}, timeout=10)
            return all(rank_count(u) > c for u, c in zip(urls, counts, strict=True))

        wait_for(both_up, 30, "both replicas up in HAProxy")
        yield front, urls, processes
    finally:
        for process in processes:
            stop(process)


def send_through(front: str, count: int, clients: int = 2) -> list[int]:
    statuses: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=front, timeout=30) as c:
            for _ in range(count // clients):
                status = c.post("/v1/rank", json={"user_id": 1, "k": 3}).status_code
                with lock:
                    statuses.append(status)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def test_traffic_moves_away_from_an_overloaded_replica_and_a_drain_loses_nothing(
    cluster: tuple[str, list[str], list[subprocess.Popen[bytes]]],
) -> None:
    front, urls, processes = cluster
    start = [rank_count(u) for u in urls]
    assert send_through(front, 200) == [200] * 200
    balanced = [rank_count(u) - s for u, s in zip(urls, start, strict=True)]
    assert min(balanced) >= 40, balanced  # round robin at equal weights

    # Overload replica 1 directly: MAX_IN_FLIGHT clients with whole-catalog requests.
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=urls[0], timeout=30) as c:
            while not stop.is_set():
                c.post(
                    "/v1/score",
                    json={"categorical": [[1] * 7] * 2000, "dense": [[0.0] * 19] * 2000},
                )

    hammers = [threading.Thread(target=hammer) for _ in range(MAX_IN_FLIGHT)]
    for thread in hammers:
        thread.start()
    try:
        time.sleep(1.5)  # a few agent checks see the headroom fall
        start = [rank_count(u) for u in urls]
        assert send_through(front, 200) == [200] * 200
        overloaded = [rank_count(u) - s for u, s in zip(urls, start, strict=True)]
    finally:
        stop.set()
        for thread in hammers:
            thread.join(timeout=60)
    assert overloaded[1] > 2 * overloaded[0], overloaded

    # Drain replica 2 with SIGTERM while traffic flows through HAProxy: no request fails.
    statuses: list[int] = []
    sender = threading.Thread(target=lambda: statuses.extend(send_through(front, 300)))
    sender.start()
    time.sleep(0.5)
    processes[1].send_signal(signal.SIGTERM)
    sender.join(timeout=120)
    assert processes[1].wait(timeout=60) == 0
    assert len(statuses) == 300 and set(statuses) == {200}, sorted(set(statuses))

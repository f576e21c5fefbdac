"""Three real replicas behind a real HAProxy (deploy/haproxy.cfg: least connections, readiness and
agent checks, L7 retries) on loopback: load spreads over all three; a saturated replica's agent
weight moves traffic to the others; a replica drained with SIGTERM under load loses nothing; one
SIGKILLed under load loses at most what it held, and HAProxy's retry answers those."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests import debian
from tests.app.servers import free_port, stop, wait_for, wait_ready
from tests.conftest import ROOT
from tests.deploy.replicas import RANK, Load, Replica, replicas
from tests.prometheus_text import value

pytestmark = pytest.mark.timeout(300)
MAX_IN_FLIGHT = 8
SETTINGS = {
    "ADMISSION__MAX_IN_FLIGHT_REQUESTS": str(MAX_IN_FLIGHT),
    "SERVER__DRAIN_DELAY_SECONDS": "1.5",
    "ADMISSION__DEFAULT_TIMEOUT_MS": "10000",
}
CLIENTS = 6  # through HAProxy; each has at most one request open


def configured(replicas: list[Replica], frontend: int, stats: int) -> str:
    """deploy/haproxy.cfg with the test's ports for its examples (8080, 8404, 800N, 900N)."""
    config = (ROOT / "deploy" / "haproxy.cfg").read_text()
    config = config.replace("127.0.0.1:8080", f"127.0.0.1:{frontend}")
    config = config.replace("127.0.0.1:8404", f"127.0.0.1:{stats}")
    servers = re.findall(r"^\s+server \S+ 127\.0\.0\.1:(\d+) check agent-port (\d+)$", config, re.M)
    assert len(servers) == len(replicas), servers
    for (port, agent), replica in zip(servers, replicas, strict=True):
        ours = f":{replica.port} check agent-port {replica.agent_port}"
        config = config.replace(f":{port} check agent-port {agent}", ours)
    return config


@dataclass
class Cluster:
    front: str  # HAProxy's frontend
    stats: str  # HAProxy's /metrics
    replicas: list[Replica]

    def haproxy_counter(self, name: str, server: str) -> float:
        found = value(httpx.get(f"{self.stats}/metrics", timeout=5).text, name, server=server)
        assert found is not None, f"HAProxy reports no {name} for {server}"
        return found


@pytest.fixture
def cluster(built_repository: Path, tmp_path: Path) -> Iterator[Cluster]:
    binary = debian.binary("haproxy", "haproxy")
    with replicas(built_repository, 3, tmp_path, SETTINGS) as started:
        frontend, stats = free_port(), free_port()
        (tmp_path / "haproxy.cfg").write_text(configured(started, frontend, stats))
        proxy = subprocess.Popen([binary, "-db", "-f", str(tmp_path / "haproxy.cfg")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            front = f"http://127.0.0.1:{frontend}"
            wait_ready(front, proxy)
            before = [r.ranked() for r in started]

            def all_up() -> bool:  # HAProxy routes to each replica (rise 2 at 500 ms)
                httpx.post(f"{front}/v1/rank", json=RANK, timeout=10)
                return all(r.ranked() > b for r, b in zip(started, before, strict=True))

            wait_for(all_up, 30, "all three replicas up in HAProxy")
            yield Cluster(front, f"http://127.0.0.1:{stats}", started)
        finally:
            stop(proxy)


def shares(replicas: list[Replica], before: list[float]) -> list[float]:
    counts = [r.ranked() - b for r, b in zip(replicas, before, strict=True)]
    return [count / sum(counts) for count in counts]


def agent_weight(replica: Replica) -> str:
    with socket.create_connection(("127.0.0.1", replica.agent_port), timeout=5) as agent:
        return agent.recv(64).decode().strip()


def test_load_spreads_and_a_saturated_replicas_agent_weight_moves_it_away(
    cluster: Cluster,
) -> None:
    front, started = cluster.front, cluster.replicas
    before = [r.ranked() for r in started]
    with Load([front], CLIENTS, limit=300) as load:
        load.wait(120)
    assert load.statuses == {200: 300}, load.statuses
    even = shares(started, before)
    assert min(even) > 0.2, even

    # Saturate replica-0 directly: MAX_IN_FLIGHT clients with whole-catalog requests.
    done = threading.Event()

    def hammer() -> None:
        body = {"categorical": [[1] * 7] * 2000, "dense": [[0.0] * 19] * 2000}
        with httpx.Client(base_url=started[0].url, timeout=30) as client:
            while not done.is_set():
                client.post("/v1/score", json=body)

    hammers = [threading.Thread(target=hammer) for _ in range(MAX_IN_FLIGHT)]
    for thread in hammers:
        thread.start()
    try:
        wait_for(lambda: int(agent_weight(started[0]).split()[1].rstrip("%")) <= 25, 60,
                 "replica-0's agent reporting it near saturation")  # fmt: skip
        before = [r.ranked() for r in started]
        with Load([front], CLIENTS, limit=300) as load:
            load.wait(120)
        saturated = shares(started, before)
    finally:
        done.set()
        for thread in hammers:
            thread.join(timeout=60)
    print(
        f"\nshares of 300 requests: even {[f'{s:.0%}' for s in even]}, "
        f"replica-0 saturated {[f'{s:.0%}' for s in saturated]}"
    )
    assert load.statuses == {200: 300}, load.statuses
    assert saturated[0] < 0.5 * min(saturated[1:]), saturated


def test_a_drained_replica_loses_nothing_and_a_killed_one_only_what_it_held(
    cluster: Cluster,
) -> None:
    front, started = cluster.front, cluster.replicas
    # SIGTERM replica-2 while traffic flows: the agent says "drain", readiness fails, what it
    # accepted is answered, and it exits 0.
    with Load([front], CLIENTS, limit=600) as drained:
        wait_for(lambda: drained.statuses.total() >= 100, 60, "traffic flowing")
        started[2].process.send_signal(signal.SIGTERM)
        assert started[2].process.wait(timeout=60) == 0
        drained.wait(120)
    assert drained.statuses == {200: 600}, drained.statuses

    # SIGKILL replica-1 while traffic flows: at most the CLIENTS requests it held are lost;
    # HAProxy retries those whose connection closed unanswered on replica-0.
    before = started[0].ranked()
    retries = cluster.haproxy_counter("haproxy_server_retry_warnings_total", "replica2")
    with Load([front], CLIENTS, limit=600) as killed:
        wait_for(lambda: killed.statuses.total() >= 100, 60, "traffic flowing")
        started[1].process.kill()
        started[1].process.wait(timeout=30)
        killed.wait(120)
    lost = killed.statuses.total() - killed.statuses[200]
    survivor = started[0].ranked() - before
    retried = cluster.haproxy_counter("haproxy_server_retry_warnings_total", "replica2") - retries
    print(
        f"\nSIGTERM under load: {dict(drained.statuses)}; SIGKILL under load: "
        f"{dict(killed.statuses)} ({lost} lost, {retried:.0f} retried by HAProxy); "
        f"replica-0 answered {survivor:.0f}"
    )
    assert killed.statuses.total() == 600 and lost <= CLIENTS, killed.statuses

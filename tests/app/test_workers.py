"""`[server] workers = 2`: two HTTP worker processes feeding one engine process, for real.

The answers and the metrics are one server's whatever worker took the connection; arrays cross in
shared memory and, when larger than a slot, inline; a killed worker is replaced while the other
serves; a killed engine fails what it held with a 503 that says so, readiness drops until the
supervisor's new engine is up; the in-flight limit is the server's, shared out among workers."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton

from bench.processes import ADMIN_HEADERS, ADMIN_TOKEN
from models.artifacts import repository
from models.runtime import OnnxRuntimeSession
from tests.app.servers import free_port, running_server, wait_for
from tests.conftest import MODEL_NAME
from tests.prometheus_text import samples

pytestmark = pytest.mark.timeout(240)
DEVICE = [{"name": "cpu", "backend": "onnxruntime-cpu"}]
ADMIN = {"FAULTS__ADMIN_ENABLED": "true", "FAULTS__ADMIN_TOKEN": ADMIN_TOKEN}


def children(pid: int) -> dict[str, list[int]]:
    """The supervisor's children by role (engine, worker)."""
    roles: dict[str, list[int]] = {}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        command = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        role = command[command.index(b"--role") + 1].decode()
        roles.setdefault(role, []).append(int(child))
    return roles


@pytest.fixture(scope="module")
def rows(built_repository: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    version = repository.open_version(built_repository, MODEL_NAME)
    split = version.load_test_split()
    inputs = version.tables.assemble(split.user_rows[:64], split.item_rows[:64])
    variant = version.manifest.variant(version.manifest.default_variants["cpu"])
    return inputs, OnnxRuntimeSession(version.file(variant.file)).run(inputs)


def test_workers_answer_as_one_server(
    built_repository: Path, tmp_path: Path, rows: tuple[dict[str, np.ndarray], np.ndarray]
) -> None:
    inputs, expected = rows
    grpc_port, agent_port = free_port(), free_port()
    settings = {
        "SERVER__WORKERS": "2", "GRPC__PORT": str(grpc_port),
        "LOAD_BALANCING__AGENT_CHECK_PORT": str(agent_port),
        # 8 rows fit a 4 KiB slot; 64 rows (8.4 KB) cross inline, over the socket.
        "SERVER__SHARED_MEMORY_SLOT_KIB": "4", "ADMISSION__DEFAULT_TIMEOUT_MS": "10000",
    }  # fmt: skip
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    with running_server(built_repository, settings, tmp_path / "server.log", DEVICE) as (
        process,
        url,
    ):
        assert sorted(children(process.pid)) == ["engine", "worker"]
        assert len(children(process.pid)["worker"]) == 2

        def client(index: int) -> None:
            for request in range(15):
                count = 8 if (index + request) % 2 else 64
                body = {"categorical": inputs["categorical"][:count].tolist(),
                        "dense": inputs["dense"][:count].tolist()}  # fmt: skip
                # A new connection each time, so both workers take some.
                response = httpx.post(f"{url}/v1/score", json=body, timeout=30,
                                      headers={"Connection": "close"})  # fmt: skip
                right = response.status_code == 200 and np.allclose(
                    response.json()["scores"], expected[:count], atol=1e-5
                )
                with lock:
                    outcomes[f"{count} rows {'right' if right else response.text[:80]}"] += 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert outcomes == {"8 rows right": 30, "64 rows right": 30}

        grpc_client = triton.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        tensors = []
        for name, datatype in (("categorical", "INT64"), ("dense", "FP32")):
            tensor = triton.InferInput(name, list(inputs[name][:8].shape), datatype)
            tensor.set_data_from_numpy(inputs[name][:8])
            tensors.append(tensor)
        scored = grpc_client.infer(MODEL_NAME, tensors).as_numpy("probability")
        assert np.allclose(scored, expected[:8], atol=1e-5)
        grpc_client.close()

        with httpx.Client(base_url=url, timeout=10) as http:
            assert http.get("/v2/health/ready").status_code == 200
            load = http.get("/v1/load").json()
            assert load["healthy_devices"] == ["cpu"] and not load["draining"]
            with socket.create_connection(("127.0.0.1", agent_port), timeout=5) as agent:
                assert agent.recv(64).decode().startswith("up ")
            config = http.get(f"/v2/models/{MODEL_NAME}/config").json()
            assert [g["name"] for g in config["instance_group"]] == ["cpu"]
            assert config["instance_group"][0]["backend"] == "onnxruntime-cpu"

            def stats() -> dict[str, object]:
                answer = http.get(f"/v2/models/{MODEL_NAME}/stats").json()
                return dict(answer["model_stats"][0])

            # A V2 request over REST too: the statistics count each request once (the engine's
            # schedulers count; no worker adds its own), whichever worker and transport took it.
            v2 = {"inputs": [
                {"name": name, "datatype": datatype, "shape": list(inputs[name][:8].shape),
                 "data": inputs[name][:8].ravel().tolist()}
                for name, datatype in (("categorical", "INT64"), ("dense", "FP32"))
            ]}  # fmt: skip
            assert http.post(f"/v2/models/{MODEL_NAME}/infer", json=v2).status_code == 200
            counts: list[object] = []

            def counted() -> bool:
                counts.append(stats()["execution_count"])
                return counts[-1] == 62

            wait_for(counted, 5, "the statistics count 62")
            assert set(counts) <= set(range(63)), counts  # never a request counted twice
            assert stats()["inference_count"] == 30 * 8 + 30 * 64 + 8 + 8
            text = http.get("/metrics").text
        scored_requests = sum(
            value for labels, value in samples(text, "recsys_request_duration_seconds_count")
            if labels["endpoint"] == "/v1/score"
        )  # fmt: skip
        assert scored_requests == 60  # both workers' histograms, summed
        rows_scored = sum(v for _, v in samples(text, "recsys_rows_scored_total"))
        assert rows_scored == 30 * 8 + 30 * 64 + 8 + 8  # the engine's counter
        assert samples(text, "recsys_device_healthy") == [({"model": MODEL_NAME, "device": "cpu"},
                                                           1.0)]  # fmt: skip


def test_a_dead_worker_is_replaced_and_a_dead_engine_fails_what_it_held(
    built_repository: Path, tmp_path: Path
) -> None:
    settings = {
        **ADMIN, "SERVER__WORKERS": "2", "FAULTS__BATCH_TIMEOUT_MS": "30000",
        "ADMISSION__DEFAULT_TIMEOUT_MS": "30000",
    }  # fmt: skip
    body = {"user_id": 1, "candidates": [1, 2, 3], "k": 2}
    with (
        running_server(built_repository, settings, tmp_path / "server.log", DEVICE) as (
            process,
            url,
        ),
        httpx.Client(base_url=url, timeout=60, headers=ADMIN_HEADERS) as admin,
    ):
        first, _ = children(process.pid)["worker"]
        os.kill(first, signal.SIGKILL)
        statuses = Counter(
            httpx.post(f"{url}/v1/rank", json=body, headers={"Connection": "close"}).status_code
            for _ in range(40)
        )
        assert statuses == {200: 40}  # the other worker took every connection meanwhile
        wait_for(lambda: len(set(children(process.pid)["worker"]) - {first}) == 2, 20,
              "a new worker started")  # fmt: skip
        wait_for(lambda: httpx.get(f"{url}/v2/health/ready").status_code == 200, 20, "ready")

        # Requests held in a stalled batch when the engine dies: answered 503, saying why.
        assert admin.post("/admin/faults/cpu", json={"mode": "stall"}).status_code == 200
        held: list[tuple[int, str]] = []

        def hold() -> None:
            answer = httpx.post(f"{url}/v1/rank", json=body, timeout=60)
            held.append((answer.status_code, answer.text))

        threads = [threading.Thread(target=hold) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        assert not held, held
        (engine,) = children(process.pid)["engine"]
        killed_at = time.monotonic()
        os.kill(engine, signal.SIGKILL)
        for thread in threads:
            thread.join(timeout=30)
        answered_in = time.monotonic() - killed_at
        assert [status for status, _ in held] == [503, 503, 503]
        assert all("engine process exited" in text for _, text in held), held
        assert answered_in < 5
        wait_for(lambda: httpx.get(f"{url}/v2/health/ready").status_code == 503, 2, "not ready")
        refused = httpx.post(f"{url}/v1/rank", json=body)
        assert refused.status_code in (200, 503)  # 200 only once the new engine is up
        wait_for(lambda: httpx.get(f"{url}/v2/health/ready").status_code == 200, 90,
              "ready on a new engine")  # fmt: skip
        assert children(process.pid)["engine"] != [engine]
        answer = httpx.post(f"{url}/v1/rank", json=body)  # the new engine's device: no fault
        assert answer.status_code == 200, answer.text
        assert process.poll() is None


def test_the_in_flight_limit_is_the_servers_shared_among_workers(
    built_repository: Path, tmp_path: Path
) -> None:
    """20 requests written at once on 20 connections to 2 workers sharing a limit of 4 (2
    each): however the kernel spreads the connections, at most 4 are held, the rest refused."""
    settings = {
        **ADMIN, "SERVER__WORKERS": "2", "FAULTS__BATCH_TIMEOUT_MS": "10000",
        "ADMISSION__DEFAULT_TIMEOUT_MS": "30000", "ADMISSION__MAX_IN_FLIGHT_REQUESTS": "4",
    }  # fmt: skip
    body = b'{"user_id": 1, "candidates": [1, 2, 3], "k": 2}'
    with (
        running_server(built_repository, settings, tmp_path / "server.log", DEVICE) as (_, url),
        httpx.Client(base_url=url, timeout=60, headers=ADMIN_HEADERS) as client,
    ):
        assert client.post("/admin/faults/cpu", json={"mode": "stall"}).status_code == 200
        host, port = url.removeprefix("http://").split(":")
        request = (f"POST /v1/rank HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body  # fmt: skip
        connections = [socket.create_connection((host, int(port)), timeout=5) for _ in range(20)]
        for connection in connections:
            connection.sendall(request)
        time.sleep(3)  # every refusal written by now, however busy the two cores are
        refused = held = 0
        for connection in connections:
            connection.settimeout(0.2)
            try:
                answer = connection.recv(65536)
                refused += answer.startswith(b"HTTP/1.1 503 ")
            except TimeoutError:
                held += 1
        assert 2 <= held <= 4 and refused == 20 - held, (held, refused)
        assert client.post("/admin/faults/cpu", json={"mode": "none"}).status_code == 200
        for connection in connections:
            connection.close()
        text = client.get("/metrics").text
        in_flight = [v for labels, v in samples(text, "recsys_refused_requests_total")
                     if labels["reason"] == "in_flight"]  # fmt: skip
        assert in_flight == [refused]


def test_a_stopped_engine_turns_readiness_false_and_its_requests_fail_past_their_deadline(
    built_repository: Path, tmp_path: Path
) -> None:
    """SIGSTOP: the engine's event loop stops turning (as a hung one would); nothing answers,
    but no request is left hanging: it fails 504 a second past its deadline."""
    settings = {"SERVER__WORKERS": "2", "ADMISSION__DEFAULT_TIMEOUT_MS": "5000"}
    body = {"user_id": 1, "candidates": [1, 2, 3], "k": 2}
    with running_server(built_repository, settings, tmp_path / "server.log", DEVICE) as (
        process,
        url,
    ):
        (engine,) = children(process.pid)["engine"]
        os.kill(engine, signal.SIGSTOP)
        try:
            started = time.monotonic()
            answer = httpx.post(f"{url}/v1/rank", json=body, timeout=30,
                                headers={"X-Request-Timeout-Ms": "500"})  # fmt: skip
            elapsed = time.monotonic() - started
            assert answer.status_code == 504, answer.text
            assert "no answer from the engine process" in answer.json()["error"]
            assert 1.4 < elapsed < 4.0
            wait_for(lambda: httpx.get(f"{url}/v2/health/ready").status_code == 503, 3, "not ready")
        finally:
            os.kill(engine, signal.SIGCONT)
        wait_for(lambda: httpx.get(f"{url}/v2/health/ready").status_code == 200, 5, "ready again")
        assert httpx.post(f"{url}/v1/rank", json=body).status_code == 200
        assert children(process.pid)["engine"] == [engine]  # the same engine, going on


def test_nothing_outlives_a_killed_supervisor(built_repository: Path, tmp_path: Path) -> None:
    with running_server(built_repository, {"SERVER__WORKERS": "2"}, tmp_path / "server.log",
                        DEVICE) as (process, _):  # fmt: skip
        roles = children(process.pid)
        os.kill(process.pid, signal.SIGKILL)
        orphans = [pid for pids in roles.values() for pid in pids]
        wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in orphans), 30,
              "the engine and the workers exited")  # fmt: skip

"""Fault isolation for real: a device told to fail, then stall, under load; no request is lost or
answered wrongly, and the device comes back after its cool-down."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.processes import ADMIN_HEADERS, ADMIN_TOKEN
from models.artifacts import repository
from models.runtime import OnnxRuntimeSession
from tests.app.servers import running_server, wait_for
from tests.conftest import MODEL_NAME, ROOT

pytestmark = pytest.mark.timeout(180)


def metric(text: str, name: str, device: str | None = None) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and (device is None or sample.labels.get("device") == device):
                return float(sample.value)
    raise KeyError(name)


@pytest.mark.parametrize("workers", ["1", "2"])  # 2: the faults injected in the engine process
def test_a_failing_then_stalling_device_loses_no_request(
    built_repository: Path, tmp_path: Path, workers: str
) -> None:
    version = repository.open_version(built_repository, MODEL_NAME)
    split = version.load_test_split()
    inputs = version.tables.assemble(split.user_rows[:64], split.item_rows[:64])
    variant = version.manifest.variant(version.manifest.default_variants["cpu"])
    expected = OnnxRuntimeSession(version.file(variant.file)).run(inputs)
    body = {"categorical": inputs["categorical"].tolist(), "dense": inputs["dense"].tolist()}

    settings = {
        "FAULTS__ADMIN_ENABLED": "true", "FAULTS__ADMIN_TOKEN": ADMIN_TOKEN,
        "FAULTS__BATCH_TIMEOUT_MS": "300",
        "FAULTS__COOL_DOWN_SECONDS": "0.5", "FAULTS__PROBE_INTERVAL_SECONDS": "0.1",
        "ADMISSION__DEFAULT_TIMEOUT_MS": "5000",
        # Round robin, so the faulty device is offered batches whenever it is in routing.
        "ROUTING__POLICY": "round-robin", "SERVER__WORKERS": workers,
    }  # fmt: skip
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    stop_sending = threading.Event()
    with running_server(built_repository, settings, tmp_path / "server.log") as (_, url):

        def client() -> None:
            with httpx.Client(base_url=url, timeout=10) as c:
                for _ in range(2000):
                    if stop_sending.is_set():
                        return
                    response = c.post("/v1/score", json=body)
                    if response.status_code != 200:
                        outcome = f"{response.status_code}: {response.text[:80]}"
                    elif np.allclose(response.json()["scores"], expected, atol=1e-5):
                        outcome = "right"
                    else:
                        outcome = "wrong scores"
                    with lock:
                        outcomes[outcome] += 1

        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        admin = httpx.Client(base_url=url, timeout=10, headers=ADMIN_HEADERS)

        def device(name: str) -> float:
            try:
                return metric(admin.get("/metrics").text, name, "cpu-openvino")
            except KeyError:  # a labelled series appears with its first event
                return 0.0

        def answered() -> int:
            with lock:
                return outcomes["right"]

        def some_traffic() -> None:
            seen = answered()
            wait_for(lambda: answered() >= seen + 20, 30, "20 more right answers")

        # Counters, written as events happen (the health gauge is refreshed only periodically
        # by an engine process, so it may still show the state before a change).
        failed, served = "recsys_device_failures_total", "recsys_batch_execution_seconds_count"
        for mode in ("fail", "none", "stall", "none"):
            some_traffic()
            failures, batches = device(failed), device(served)
            reply = admin.post("/admin/faults/cpu-openvino", json={"mode": mode})
            assert reply.status_code == 200, reply.text
            if mode == "none":  # a probe brings it back after its cool-down: batches again
                wait_for(lambda: device(served) > batches, 30, "batches on the device again")  # noqa: B023
            else:
                wait_for(lambda: device(failed) > failures, 30, f"a batch failed ({mode})")  # noqa: B023
        some_traffic()
        wait_for(lambda: device("recsys_device_healthy") == 1, 30, "the device healthy at the end")
        stop_sending.set()
        for thread in threads:
            thread.join(timeout=30)
        text = admin.get("/metrics").text
        admin.close()
    assert outcomes["right"] > 100
    assert set(outcomes) == {"right"}, outcomes
    assert metric(text, "recsys_device_failures_total", "cpu-openvino") >= 2
    assert metric(text, "recsys_batch_retries_total") >= 2
    assert metric(text, "recsys_device_healthy", "cpu-openvino") == 1
    assert metric(text, "recsys_device_healthy", "cpu-onnxruntime") == 1


def test_the_admin_switch_is_off_by_default(client: httpx.Client) -> None:
    response = client.post("/admin/faults/cpu-openvino", json={"mode": "fail"})
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"RECSYS_FAULTS__ADMIN_ENABLED": "true"}, "faults.admin_token: at least 16 characters"),
        ({"RECSYS_FAULTS__ADMIN_ENABLED": "true", "RECSYS_FAULTS__ADMIN_TOKEN": ADMIN_TOKEN,
          "RECSYS_SERVER__HOST": "0.0.0.0"}, "'0.0.0.0' is not loopback"),
    ],
    ids=["no-token", "not-loopback"],
)  # fmt: skip
def test_fault_injection_needs_a_token_and_loopback(settings: dict[str, str], message: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **settings}
    result = subprocess.run([sys.executable, "-m", "app"], env=env, capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1

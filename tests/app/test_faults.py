"""Fault isolation for real: a device told to fail, then stall, under load; no request is lost or
answered wrongly, and the device comes back after its cool-down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from models import repository
from models.runtime import OnnxRuntimeSession
from tests.app.conftest import DEVICES, free_port
from tests.conftest import MODEL_NAME, ROOT

pytestmark = pytest.mark.timeout(180)


def metric(text: str, name: str, device: str | None = None) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and (device is None or sample.labels.get("device") == device):
                return float(sample.value)
    raise KeyError(name)


def test_a_failing_then_stalling_device_loses_no_request(built_repository: Path) -> None:
    version = repository.open_version(built_repository, MODEL_NAME)
    split = version.load_test_split()
    inputs = version.tables.assemble(split.user_rows[:64], split.item_rows[:64])
    variant = version.manifest.variant(version.manifest.default_variants["cpu"])
    expected = OnnxRuntimeSession(version.file(variant.file)).run(inputs)
    body = {"categorical": inputs["categorical"].tolist(), "dense": inputs["dense"].tolist()}

    port = free_port()
    env = {
        **os.environ, "PYTHONPATH": str(ROOT),
        "RECSYS_MODEL__REPOSITORY": str(built_repository), "RECSYS_DEVICES": json.dumps(DEVICES),
        "RECSYS_FAULTS__ADMIN_ENABLED": "true", "RECSYS_FAULTS__BATCH_TIMEOUT_MS": "300",
        "RECSYS_FAULTS__COOL_DOWN_SECONDS": "0.5", "RECSYS_FAULTS__PROBE_INTERVAL_SECONDS": "0.1",
        "RECSYS_ADMISSION__DEFAULT_TIMEOUT_MS": "5000",
        # Round robin, so the faulty device is offered batches whenever it is in routing.
        "RECSYS_ROUTING__POLICY": "round-robin",
    }  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "--port", str(port)], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and process.poll() is None, "server never ready"
            time.sleep(0.2)

        def client() -> None:
            with httpx.Client(base_url=url, timeout=10) as c:
                for _ in range(2000):
                    if stop.is_set():
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
        admin = httpx.Client(base_url=url, timeout=10)
        for mode in ("fail", "none", "stall", "none"):
            time.sleep(1.5)  # under "none": cool-down, then a probe brings the device back
            reply = admin.post("/admin/faults/cpu-openvino", json={"mode": mode})
            assert reply.status_code == 200, reply.text
        time.sleep(1.5)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        text = admin.get("/metrics").text
        admin.close()
    finally:
        stop.set()
        process.terminate()
        process.wait(timeout=30)
    assert outcomes["right"] > 100
    assert set(outcomes) == {"right"}, outcomes
    assert metric(text, "recsys_device_failures_total", "cpu-openvino") >= 2
    assert metric(text, "recsys_batch_retries_total") >= 2
    assert metric(text, "recsys_device_healthy", "cpu-openvino") == 1
    assert metric(text, "recsys_device_healthy", "cpu-onnxruntime") == 1


def test_the_admin_switch_is_off_by_default(client: httpx.Client) -> None:
    response = client.post("/admin/faults/cpu-openvino", json={"mode": "fail"})
    assert response.status_code == 404

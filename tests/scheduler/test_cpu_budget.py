"""The cores a process may use (CPU affinity, cgroup v1 and v2 limits) and the runtime threads
each device gets from them; a real server pinned to one core reports and runs what it fitted."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.dataplane.devices import inference_threads
from bench import processes
from bench.plain_models import user_sized_ranker
from scheduler.backend import BackendConfig
from scheduler.cpu_budget import budget, cgroup_quota, fitted_threads, parse_cpu_max
from scheduler.onnxruntime_backend import OnnxRuntimeCpuBackend
from scheduler.settings import DeviceSettings
from tests.app.servers import DEVICES
from tests.conftest import ROOT


def test_cgroup_limits_are_read_from_v2_and_v1_files(tmp_path: Path) -> None:
    assert parse_cpu_max("max 100000\n") is None
    assert parse_cpu_max("150000 100000\n") == 1.5
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert cgroup_quota(tmp_path) == 2.5
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_quota(v1) is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    assert cgroup_quota(v1) == 0.5
    assert cgroup_quota(tmp_path / "absent") is None
    (tmp_path / "cpu.max").write_text("garbage\n")
    assert cgroup_quota(tmp_path) is None


@pytest.mark.parametrize(
    ("affinity", "quota", "cores"),
    [(64, None, 64), (64, 2.0, 2), (64, 2.5, 3), (4, 16.0, 4), (8, 0.5, 1)],
)
def test_the_budget_is_the_smaller_of_affinity_and_quota(affinity: int, quota: float | None,
                                                         cores: int) -> None:  # fmt: skip
    assert budget(affinity, quota).cores == cores


def test_threads_leave_the_event_loop_a_core_and_are_shared() -> None:
    assert [fitted_threads(c, 1) for c in (1, 2, 3, 16)] == [1, 1, 2, 15]
    assert [fitted_threads(c, 2) for c in (1, 2, 3, 16)] == [1, 1, 1, 7]
    ov = DeviceSettings(name="a", backend="openvino-cpu", parallel_batches=2)
    ort = DeviceSettings(name="b", backend="onnxruntime-cpu")
    gpu = DeviceSettings(name="g", backend="onnxruntime-gpu", parallel_batches=4)
    devices = (ov, ort, gpu)  # three CPU batches at once; the GPU's do not count
    assert inference_threads(ov, devices, 16) == 5
    assert inference_threads(ort.model_copy(update={"threads": 6}), devices, 16) == 6


def threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


@pytest.mark.skipif(not sys.platform.startswith("linux") or (os.cpu_count() or 1) < 2,
                    reason="needs Linux and two cores")  # fmt: skip
def test_one_thread_means_no_runtime_pool(tmp_path: Path) -> None:
    """What the fitted count buys: ONNX Runtime left to its default starts a pool sized by the
    host's cores even where the process may use one; with one thread it starts none."""
    path = user_sized_ranker(tmp_path / "model.onnx", vocabulary=500)
    inputs: dict[str, np.ndarray] = {
        "cat": np.zeros((8, 8), np.int64),
        "dense": np.zeros((8, 4), np.float32),
    }
    added = {}
    for threads in (0, 1):
        before = threads_of(os.getpid())
        backend = OnnxRuntimeCpuBackend("t", BackendConfig(path, threads=threads))
        backend.load()
        backend.run(inputs)
        added[threads] = threads_of(os.getpid()) - before
        backend.close()
    assert added[0] >= 1 and added[1] == 0, added


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="CPU affinity is Linux's")
def test_a_server_pinned_to_one_core_fits_its_threads(tmp_path: Path) -> None:
    root = tmp_path / "repository"
    user_sized_ranker(root / "ranker" / "1" / "model.onnx", vocabulary=500)
    devices = [*DEVICES[:1], {**DEVICES[1], "threads": "3"}]
    port = processes.free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RECSYS_MODEL__REPOSITORY": str(root),
           "RECSYS_DEVICES": json.dumps(devices)}  # fmt: skip
    log = tmp_path / "server.log"
    command = [sys.executable, "-m", "app", "--port", str(port)]
    with processes.running(command, port, env, log, cpus={0}) as (_, url):
        config = httpx.get(f"{url}/v2/models/ranker/config").json()
    threads = {g["name"]: g["threads"] for g in config["instance_group"]}
    assert threads == {"cpu-openvino": 1, "cpu-onnxruntime": 3}
    assert "1 usable cores (1 in the CPU affinity" in log.read_text()

"""`python -m bench.gpu`: the ONNX Runtime GPU path, checked on a machine with an NVIDIA GPU.

1. Accuracy: each GPU-served variant scored on the test split with the CUDA provider: its test AUC
   against the manifest's, its scores against the CPU device's on the same rows.
2. Batch latency: the median per batch size (host arrays in and out, as the server calls it), the
   GPU device beside the default CPU device, same inputs.
3. The server with its default devices (OpenVINO CPU + ONNX Runtime GPU): /v1/rank at rising
   open-loop rates; rows scored per device (from /metrics) show where the router sent the work.
4. Fault isolation: under load, the GPU failing, then stalled (the admin switch), healed after
   each: every request must still be answered 200 (batches retried on the CPU, the GPU probed
   back after each).

Exits 1 when an accuracy or fault check fails, 3 when no CUDA provider is there. Writes
`--out` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from app.dataplane.devices import backend_config
from bench import loadgen, processes
from bench.stats import summarize
from bench.workload import WHOLE_CATALOG, label, rank_bodies
from config.settings import load_settings
from models.artifacts.repository import ModelVersion, open_version
from models.artifacts.servable import VariantFile
from models.metrics import roc_auc
from scheduler.backend import Backend, create_backend
from scheduler.errors import DeviceUnavailable

BATCH_ROWS = (1, 64, 256, 1024, 1682, 4096)
AUC_TOLERANCE = 1e-4
GPU = "gpu-onnxruntime"  # the default GPU device's name in the default settings


def backend_for(version: ModelVersion, kind: str, variant: str) -> Backend:
    config = backend_config(servable_variant(version, variant), batched=True)
    backend = create_backend(kind, kind, config)
    backend.load()
    return backend


def servable_variant(version: ModelVersion, name: str) -> VariantFile:
    variant = version.manifest.variant(name)
    return VariantFile(name, version.file(variant.file), variant.format, variant.precision,
                       variant.runtimes)  # fmt: skip


def first_output(outputs: dict[str, np.ndarray]) -> np.ndarray:
    return next(iter(outputs.values()))


def median_ms(backend: Backend, inputs: dict[str, np.ndarray], runs: int = 50) -> float:
    for _ in range(3):
        backend.run(inputs)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        backend.run(inputs)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def check_sessions(version: ModelVersion) -> dict[str, Any]:
    defaults = version.manifest.default_variants
    split = version.load_test_split()
    inputs = version.tables.assemble(split.user_rows, split.item_rows)
    cpu = backend_for(version, "openvino-cpu", defaults["cpu"])
    cpu_scores = first_output(cpu.run(inputs)).ravel()
    gpu_variants = [v.name for v in version.manifest.variants if v.name in {
        defaults["gpu"], defaults["cpu"]}]  # fmt: skip
    accuracy = []
    gpus = {}
    for name in gpu_variants:
        gpu = gpus[name] = backend_for(version, "onnxruntime-gpu", name)
        scores = first_output(gpu.run(inputs)).ravel().astype(np.float32)
        auc = roc_auc(split.labels, scores)
        manifest_auc = version.manifest.variant(name).test_auc
        row = {
            "variant": name,
            "test_auc": auc,
            "manifest_auc": manifest_auc,
            "max_abs_diff_vs_cpu": float(np.max(np.abs(scores - cpu_scores))),
            "matches_manifest": abs(auc - manifest_auc) <= AUC_TOLERANCE,
        }
        print(
            f"accuracy  {name:<14} GPU test AUC {auc:.4f} (manifest {manifest_auc:.4f}), "
            f"max |GPU - CPU| {row['max_abs_diff_vs_cpu']:.2e}", flush=True,
        )  # fmt: skip
        accuracy.append(row)
    gpu = gpus[defaults["gpu"]]
    latency = []
    for rows in BATCH_ROWS:
        repeat = -(-rows // len(split.labels))
        batch = {k: np.tile(a, (repeat,) + (1,) * (a.ndim - 1))[:rows] for k, a in inputs.items()}
        row = {"rows": rows, "cpu_ms": median_ms(cpu, batch), "gpu_ms": median_ms(gpu, batch)}
        print(
            f"latency   {rows:5d} rows  CPU ({defaults['cpu']}, OpenVINO) {row['cpu_ms']:7.3f} ms"
            f"  GPU ({defaults['gpu']}, ONNX Runtime CUDA) {row['gpu_ms']:7.3f} ms", flush=True,
        )  # fmt: skip
        latency.append(row)
    return {"accuracy": accuracy, "latency": latency}


def metrics_text(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
        return str(answer.read().decode())


def rows_scored(text: str) -> dict[str, float]:
    pattern = r'^recsys_rows_scored_total\{device="([^"]+)"\} (\S+)$'
    return {m[1]: float(m[2]) for m in re.finditer(pattern, text, re.MULTILINE)}


def set_fault(url: str, device: str, mode: str) -> None:
    body = json.dumps({"mode": mode})
    processes.post_json(f"{url}/admin/faults/{device}", body, headers=processes.ADMIN_HEADERS)


def check_server(version: ModelVersion, root: Path, seconds: float) -> dict[str, Any]:
    port = processes.free_port()
    faults = {**processes.ADMIN_SETTINGS, "RECSYS_FAULTS__COOL_DOWN_SECONDS": "1"}
    env = {**os.environ, "RECSYS_MODEL__REPOSITORY": str(root), **faults}
    cpus = set(range(2, os.cpu_count() or 3)) or None  # the generator has core 1
    log = Path("bench/results/gpu.server.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    steps = []
    with processes.running([sys.executable, "-m", "app", "--port", str(port)], port, env, log,
                           cpus) as (_, url):  # fmt: skip
        for candidates, rates in ((100, (500, 2000, 4000)), (WHOLE_CATALOG, (100, 500, 1500))):
            bodies = rank_bodies(version, candidates, count=200)
            loadgen.offer(port, bodies, 50, 1)  # warm-up
            for rate in rates:
                before = rows_scored(metrics_text(url))
                s = summarize(loadgen.offer(port, bodies, rate, seconds))
                after = rows_scored(metrics_text(url))
                share = {d: after[d] - before.get(d, 0.0) for d in after}
                total = sum(share.values()) or 1.0
                steps.append({"request": label(candidates), "rate": rate, "ok_per_second":
                              s.ok_per_second, "latency_ms": s.latency_ms, "refused": s.refused,
                              "errors": s.errors + s.deadline_exceeded + s.client_timeouts,
                              "rows_by_device": share})  # fmt: skip
                shares = ", ".join(f"{d} {100 * n / total:.0f}%" for d, n in sorted(share.items()))
                print(
                    f"server    {label(candidates):<14} {rate:5d}/s  goodput "
                    f"{s.ok_per_second:6.0f}/s  p50 {s.latency_ms['p50']:6.2f}  "
                    f"p99 {s.latency_ms['p99']:6.2f} ms  refused {s.refused}  rows: {shares}",
                    flush=True,
                )  # fmt: skip
        faults = check_faults(url, port, version, max(10.0, 2 * seconds))
    return {"steps": steps, "faults": faults}


def check_faults(url: str, port: int, version: ModelVersion, seconds: float) -> dict[str, Any]:
    """The GPU failing for a fifth of the run, healed, stalled for another fifth, healed."""
    bodies = rank_bodies(version, WHOLE_CATALOG, count=200)
    fifth = seconds / 5
    timers = [threading.Timer(fifth * (i + 1), set_fault, (url, GPU, mode))
              for i, mode in enumerate(("fail", "none", "stall", "none"))]  # fmt: skip
    before = rows_scored(metrics_text(url))
    for timer in timers:
        timer.start()
    result = loadgen.offer(port, bodies, 200, seconds)
    for timer in timers:
        timer.join()
    time.sleep(2)  # the probe brings the GPU back after the cool-down
    text = metrics_text(url)
    after = rows_scored(text)
    s = summarize(result)
    statuses = np.asarray(result.statuses)
    lost = int((statuses != 200).sum())
    counts = dict(zip(*(x.tolist() for x in np.unique(statuses, return_counts=True)), strict=True))
    healthy = re.search(rf'^recsys_device_healthy\{{device="{GPU}"\}} (\S+)$', text, re.M)
    retries = re.search(r"^recsys_batch_retries_total (\S+)$", text, re.M)
    report = {
        "requests": len(statuses),
        "not_200": lost,
        "statuses": {str(k): v for k, v in counts.items()},
        "latency_ms": s.latency_ms,
        "rows_by_device": {d: after[d] - before.get(d, 0.0) for d in after},
        "batch_retries": float(retries[1]) if retries else None,
        "gpu_healthy_after": float(healthy[1]) if healthy else None,
    }
    print(f"faults    {json.dumps(report)}", flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__)
    parser.add_argument("--repository", type=Path, help="model repository (default: settings)")
    parser.add_argument("--seconds", type=float, default=5.0, help="per server load step")
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu.json"))
    args = parser.parse_args(argv)
    settings = load_settings()
    root = args.repository or settings.model.repository
    version = open_version(Path(root), settings.model.name, settings.model.version)
    try:
        sessions = check_sessions(version)
    except DeviceUnavailable as exc:
        print(f"no GPU here: {exc}")
        return 3
    server = check_server(version, Path(root), args.seconds)
    checks = {
        "GPU AUC reproduces the manifest": all(r["matches_manifest"] for r in sessions["accuracy"]),
        "no request lost while the GPU stalled and failed": server["faults"]["not_200"] == 0,
        "GPU back in routing after the faults": server["faults"]["gpu_healthy_after"] == 1.0,
    }
    for name, passed in checks.items():
        print(f"{'PASS' if passed else 'FAIL'}  {name}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**sessions, **server, "checks": checks}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

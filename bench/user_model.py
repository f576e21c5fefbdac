"""`python -m bench.user_model`: a user-sized plain ranker served over V2, one device setting
after another in one run: the throughput each holds at the p99 target, and the server's CPU per
request at a fixed light rate; REST and gRPC side by side.

The model is `bench/plain_models.user_sized_ranker` (a DCN-v2-style ranker of 0.7 million
parameters, inputs `cat` INT64 [-1, 8] and `dense` FP32 [-1, 4]); each request carries 100 rows
as V2 JSON. The server runs pinned to core 0 with default settings but its device list, the
open-loop generator on core 1. Throughput at the target: the best goodput of a step whose p99 is
within `--p99-ms` with under 1% refused or failed, the offered rate stepping up by 1.5x.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import grpc_loadgen, loadgen, processes
from bench.multi_model import USER_MODEL, user_bodies
from bench.plain_models import user_sized_ranker
from bench.stats import Summary, summarize
from bench.stepping import Stepping, step_up, within_target

OPENVINO: list[dict[str, object]] = [{"name": "cpu-openvino", "backend": "openvino-cpu"}]
ONNXRUNTIME: list[dict[str, object]] = [{"name": "cpu-onnxruntime", "backend": "onnxruntime-cpu"}]
# Name -> (the server's device list, the transport). "threads 2" is what ONNX Runtime picks on
# its own on a 2-core host, whatever the process's affinity: the setting before threads were
# fitted.
CONFIGS: dict[str, tuple[list[dict[str, object]], str]] = {
    "cpu, either runtime (timed at start-up), REST": ([{"name": "cpu", "backend": "cpu"}], "rest"),
    "openvino-cpu, REST": (OPENVINO, "rest"),
    "openvino-cpu, gRPC": (OPENVINO, "grpc"),
    "onnxruntime-cpu, REST": (ONNXRUNTIME, "rest"),
    "onnxruntime-cpu, gRPC": (ONNXRUNTIME, "grpc"),
    "onnxruntime-cpu, threads 2 (its own default here), REST": (
        [{**ONNXRUNTIME[0], "threads": 2}],
        "rest",
    ),
}
Generator = Callable[[loadgen.LoadSpec], loadgen.LoadResult]
LIGHT_RATE = 100.0  # requests/s for the CPU-per-request figure


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.user_model", description=__doc__)
    parser.add_argument("--p99-ms", type=float, default=50.0)
    parser.add_argument("--step-seconds", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/user_model.json"))
    parser.add_argument("-q", "--quiet", action="store_true", help="print the result only")
    args = parser.parse_args(argv)
    bodies = user_bodies(50)
    path = f"/v2/models/{USER_MODEL}/infer"
    results: dict[str, dict[str, float]] = {}

    def meets(s: Summary) -> bool:
        return within_target(s, args.step_seconds, args.p99_ms)

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        user_sized_ranker(root / USER_MODEL / "1" / "model.onnx")
        for label, (devices, transport) in CONFIGS.items():
            port, grpc_port = processes.free_port(), processes.free_port()
            env = {**os.environ, **processes.AS_DROPPED_IN, "RECSYS_MODEL__REPOSITORY": str(root),
                   "RECSYS_DEVICES": json.dumps(devices),
                   "RECSYS_GRPC__PORT": str(grpc_port)}  # fmt: skip
            generator = grpc_loadgen.run if transport == "grpc" else loadgen.run
            target = grpc_port if transport == "grpc" else port
            command = [sys.executable, "-m", "app", "--port", str(port)]
            log = args.out.with_suffix(".server.log")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with processes.running(command, port, env, log, processes.SERVER_CPUS) as (proc, _):

                def offer(rate: float, seconds: float, target: int = target,
                          generator: Generator = generator) -> loadgen.LoadResult:  # fmt: skip
                    spec = loadgen.LoadSpec("127.0.0.1", target, bodies, path, rate, seconds,
                                            connections=512, cpu=loadgen.GENERATOR_CPU)  # fmt: skip
                    return generator(spec)

                offer(50, 2)  # warm-up
                begin, started = cpu_seconds(proc.pid), time.monotonic()
                light = summarize(offer(LIGHT_RATE, 5))
                used = cpu_seconds(proc.pid) - begin
                per_request_us = 1e6 * used / max(1, light.ok_per_second * 5)

                def show(rate: float, s: Summary, ok: bool, label: str = label) -> None:
                    if not args.quiet:
                        print(f"{label[:40]:<40} {rate:7.0f}/s  goodput {s.ok_per_second:7.0f}/s"
                              f"  p99 {s.latency_ms['p99']:6.1f} ms {'' if ok else '(misses)'}",
                              flush=True)  # fmt: skip

                def measure(rate: float) -> Summary:
                    return summarize(offer(rate, args.step_seconds))

                best, _ = step_up(measure, meets, Stepping(100.0, factor=1.5, refine=3), show)
                results[label] = {
                    "throughput_at_target": best,
                    "light_p50_ms": light.latency_ms["p50"],
                    "light_cpu_us_per_request": per_request_us,
                    "light_seconds": time.monotonic() - started,
                }
    print(f"user-sized ranker, 100 rows a request over V2 JSON, server on one core; p99 <= "
          f"{args.p99_ms:g} ms; CPU per request at {LIGHT_RATE:g} requests/s:")  # fmt: skip
    for label, r in results.items():
        print(f"  {label:<50} {r['throughput_at_target']:7.0f}/s   p50 {r['light_p50_ms']:5.2f} ms"
              f"   {r['light_cpu_us_per_request']:6.0f} us CPU/request")  # fmt: skip
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m bench.workers`: one process, an engine process fed by HTTP workers, and independent
server processes, side by side in one run, on the built-in model's 100-candidate /v1/rank and on a
user-sized ranker over V2 JSON (100 rows a request).

For each configuration: the server's CPU per answered request at a fixed rate (every process of
the server counted: supervisor, engine, workers), p50 there, and the throughput it holds at the p99
target (best goodput of a step with p99 within `--p99-ms` and under 1% refused or failed, the
offered rate stepping up by 1.5x). The open-loop generator runs pinned to the last core; a server
"on core 0" is pinned there, one "on every core" shares the generator's core too (say so when
reading the figures of a small machine).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench import loadgen, processes
from bench.crossing import process_cpu
from bench.multi_model import USER_MODEL, user_bodies
from bench.plain_models import user_sized_ranker
from bench.stats import Summary, summarize
from bench.stepping import Stepping, step_up, within_target
from bench.workload import rank_bodies
from config.settings import load_settings
from models.artifacts.repository import open_version

ALL_CORES = set(range(os.cpu_count() or 1))
# label -> (RECSYS_* settings, the cores the server may use)
CONFIGS: dict[str, tuple[dict[str, str], set[int]]] = {
    "one process, core 0": ({"SERVER__WORKERS": "1"}, {0}),
    "engine process + 1 worker, core 0": (
        {"SERVER__WORKERS": "1", "SERVER__ENGINE": "process"}, {0}
    ),
    "one process, every core": ({"SERVER__WORKERS": "1"}, ALL_CORES),
    "engine process + 1 worker, every core": (
        {"SERVER__WORKERS": "1", "SERVER__ENGINE": "process"}, ALL_CORES
    ),
    f"engine process + {len(ALL_CORES)} workers, every core": (
        {"SERVER__WORKERS": str(len(ALL_CORES))}, ALL_CORES
    ),
    f"{len(ALL_CORES)} independent servers, every core": (
        {"SERVER__WORKERS": str(len(ALL_CORES)), "SERVER__ENGINE": "per_worker"}, ALL_CORES
    ),
}  # fmt: skip


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and every descendant alive now."""
    return sum(process_cpu(pid).values())


def measure(label: str, env: dict[str, str], cpus: set[int], bodies: list[str], path: str,
            args: argparse.Namespace) -> dict[str, float]:  # fmt: skip
    """One configuration: CPU per request at the fixed rate, then the throughput at the target."""
    port = processes.free_port()
    command = [sys.executable, "-m", "app", "--port", str(port)]
    log = args.out.with_suffix(".server.log")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    generator_cpu = max(ALL_CORES)
    with processes.running(command, port, env, log, cpus) as (proc, _):

        def offer(rate: float, seconds: float) -> loadgen.LoadResult:
            spec = loadgen.LoadSpec("127.0.0.1", port, bodies, path, rate, seconds,
                                    connections=512, cpu=generator_cpu)  # fmt: skip
            return loadgen.run(spec)

        offer(100, 2)  # warm-up (every worker's connections and caches)
        begin, started = tree_cpu_seconds(proc.pid), time.monotonic()
        fixed = summarize(offer(args.fixed_rate, 5))
        used = tree_cpu_seconds(proc.pid) - begin

        def show(rate: float, s: Summary, ok: bool) -> None:
            if not args.quiet:
                verdict = "" if ok else "(misses)"
                print(f"{label[:44]:<44} {rate:7.0f}/s  goodput {s.ok_per_second:7.0f}/s  p99 "
                      f"{s.latency_ms['p99']:6.1f} ms {verdict}", flush=True)  # fmt: skip

        best, _ = step_up(
            lambda rate: summarize(offer(rate, args.step_seconds)),
            lambda s: within_target(s, args.step_seconds, args.p99_ms),
            Stepping(200.0, factor=1.5, refine=3), show,
        )  # fmt: skip
    return {
        "throughput_at_target": best,
        "fixed_rate_p50_ms": fixed.latency_ms["p50"],
        "fixed_rate_cpu_us_per_request": 1e6 * used / max(1, fixed.ok_per_second * 5),
        "seconds": time.monotonic() - started,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__)
    parser.add_argument("--p99-ms", type=float, default=50.0)
    parser.add_argument("--step-seconds", type=float, default=4.0)
    parser.add_argument("--fixed-rate", type=float, default=300.0, help="for CPU per request")
    parser.add_argument("--only", help="run the configurations whose label contains this")
    parser.add_argument("--workload", choices=("rank", "user", "both"), default="both")
    parser.add_argument("--out", type=Path, default=Path("bench/results/workers.json"))
    parser.add_argument("-q", "--quiet", action="store_true", help="print the result only")
    args = parser.parse_args(argv)
    settings = load_settings()
    builtin = settings.model.repository.resolve()
    version = open_version(builtin, settings.model.name)
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        user_root = Path(scratch)
        user_sized_ranker(user_root / USER_MODEL / "1" / "model.onnx")
        workloads = {
            "rank": ("100-candidate /v1/rank, built-in model", builtin, rank_bodies(version, 100),
                     "/v1/rank"),
            "user": ("user-sized ranker (0.7 M parameters), V2 JSON, 100 rows", user_root,
                     user_bodies(50), f"/v2/models/{USER_MODEL}/infer"),
        }  # fmt: skip
        for key, (workload, root, bodies, path) in workloads.items():
            if args.workload not in (key, "both"):
                continue
            for label, (overrides, cpus) in CONFIGS.items():
                if args.only and args.only not in label:
                    continue
                env = {**os.environ, **processes.AS_DROPPED_IN,
                       "RECSYS_MODEL__REPOSITORY": str(root),
                       **{f"RECSYS_{k}": v for k, v in overrides.items()}}  # fmt: skip
                row = measure(label, env, cpus, bodies, path, args)
                results.setdefault(workload, {})[label] = row
    print(f"{len(ALL_CORES)} cores; the generator on core {max(ALL_CORES)}; p99 <= "
          f"{args.p99_ms:g} ms; CPU per request at {args.fixed_rate:g} requests/s, every process "
          "of the server:")  # fmt: skip
    for workload, rows in results.items():
        print(f"  {workload}")
        for label, r in rows.items():
            print(f"    {label:<44} {r['throughput_at_target']:7.0f}/s   p50 "
                  f"{r['fixed_rate_p50_ms']:5.2f} ms   {r['fixed_rate_cpu_us_per_request']:6.0f} "
                  "us CPU/request")  # fmt: skip
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m bench.features`: what reading /v1/rank's rows from Redis costs, side by side in one
run: the built-in model's 100-candidate /v1/rank served from its tables, from Redis with the item
cache, and from Redis without it (every candidate's row read on every request).

The server is pinned to core 0; Redis (a `redis-server` the benchmark starts, with the built
version published into it) and the open-loop generator share the last core. For each source, in
interleaved rounds: p50, p99 and the server's CPU per answered request at a light rate and at a
fixed load, then the throughput it holds at the p99 target (steps of 1.5x, then refinement).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from bench import loadgen, processes
from bench.stats import summarize
from bench.stepping import Stepping, step_up, within_target
from bench.workers import ALL_CORES, tree_cpu_seconds
from bench.workload import rank_bodies
from config.settings import load_settings
from models.artifacts.repository import open_version

SOURCES: dict[str, dict[str, str]] = {
    "tables": {},
    "redis, item cache": {"FEATURES__SOURCE": "redis"},
    "redis, no item cache": {"FEATURES__SOURCE": "redis", "FEATURES__ITEM_CACHE_ENTRIES": "0"},
}


def start_redis(port: int, cpu: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit(
            "error: redis-server is not installed (Debian: apt-get install redis-server)"
        )
    command = ["taskset", "-c", str(cpu), binary, "--port", str(port), "--bind", "127.0.0.1",
               "--save", "", "--appendonly", "no"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            return process
        except redis.ConnectionError:
            time.sleep(0.05)
    raise SystemExit("error: redis-server did not answer PING within 10 s")


def publish(repository: Path, port: int) -> None:
    subprocess.run([sys.executable, "-m", "models", "-q", "--repository", str(repository),
                    "publish-features", "--redis", f"redis://127.0.0.1:{port}/0"],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip


def measure(label: str, env: dict[str, str], bodies: list[str],
            args: argparse.Namespace) -> dict[str, float]:  # fmt: skip
    port = processes.free_port()
    command = [sys.executable, "-m", "app", "--port", str(port)]
    generator = max(ALL_CORES)
    log = Path(tempfile.gettempdir()) / "bench-features.server.log"
    with processes.running(command, port, env, log, {0}) as (proc, _):

        def offer(rate: float, seconds: float) -> loadgen.LoadResult:
            spec = loadgen.LoadSpec("127.0.0.1", port, bodies, "/v1/rank", rate, seconds,
                                    connections=512, cpu=generator)  # fmt: skip
            return loadgen.run(spec)

        offer(100, 2)  # warm-up: connections, the item cache
        row: dict[str, float] = {}
        for name, rate, seconds in (
            ("light", args.light_rate, 10.0),
            ("load", args.load_rate, 5.0),
        ):
            begin = tree_cpu_seconds(proc.pid)
            s = summarize(offer(rate, seconds))
            used = tree_cpu_seconds(proc.pid) - begin
            row[f"{name}_p50_ms"] = s.latency_ms["p50"]
            row[f"{name}_p99_ms"] = s.latency_ms["p99"]
            row[f"{name}_cpu_us"] = 1e6 * used / max(1, s.ok_per_second * seconds)

        def show(rate: float, s: object, ok: bool) -> None:
            if not args.quiet:
                print(f"  {label:<22} {rate:7.0f}/s {'' if ok else '(misses)'}", flush=True)

        row["throughput"], _ = step_up(
            lambda rate: summarize(offer(rate, args.step_seconds)),
            lambda s: within_target(s, args.step_seconds, args.p99_ms),
            Stepping(400.0, factor=1.5, refine=2), show,
        )  # fmt: skip
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.features", description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--light-rate", type=float, default=20.0)
    parser.add_argument("--load-rate", type=float, default=600.0)
    parser.add_argument("--p99-ms", type=float, default=50.0)
    parser.add_argument("--step-seconds", type=float, default=4.0)
    parser.add_argument("--repository", type=Path, help="default: [model] repository")
    parser.add_argument("--out", type=Path, default=Path("bench/results/features.json"))
    parser.add_argument("-q", "--quiet", action="store_true", help="print the result only")
    args = parser.parse_args(argv)
    settings = load_settings()
    root = (args.repository or settings.model.repository).resolve()
    bodies = rank_bodies(open_version(root, settings.model.name), 100)
    redis_port = processes.free_port()
    redis_server = start_redis(redis_port, max(ALL_CORES))
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in SOURCES}
    try:
        publish(root, redis_port)
        for round_ in range(args.rounds):
            for label, overrides in SOURCES.items():
                if not args.quiet:
                    print(f"round {round_ + 1}: {label}", flush=True)
                env = {**os.environ, "RECSYS_MODEL__REPOSITORY": str(root),
                       "RECSYS_FEATURES__REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                       **{f"RECSYS_{k}": v for k, v in overrides.items()}}  # fmt: skip
                runs[label].append(measure(label, env, bodies, args))
    finally:
        redis_server.kill()
        redis_server.wait()
    keys = ("light_p50_ms", "light_p99_ms", "light_cpu_us", "load_p50_ms", "load_p99_ms",
            "load_cpu_us", "throughput")  # fmt: skip
    table = {label: {k: median(r[k] for r in rows) for k in keys} for label, rows in runs.items()}
    base = table["tables"]
    print(
        f"100-candidate /v1/rank; server on core 0, Redis and the generator on core "
        f"{max(ALL_CORES)}; medians of {args.rounds} interleaved rounds; light "
        f"{args.light_rate:g}/s, load {args.load_rate:g}/s; throughput at p99 <= {args.p99_ms:g} ms"
    )
    print(
        f"{'source':<22} {'light p50':>10} {'light p99':>10} {'light CPU':>10} "
        f"{'load p50':>9} {'load p99':>9} {'load CPU':>9} {'req/s':>7}"
    )
    for label, r in table.items():
        print(
            f"{label:<22} {r['light_p50_ms']:8.2f}ms {r['light_p99_ms']:8.2f}ms "
            f"{r['light_cpu_us']:8.0f}us {r['load_p50_ms']:7.2f}ms {r['load_p99_ms']:7.2f}ms "
            f"{r['load_cpu_us']:7.0f}us {r['throughput']:7.0f}"
        )
        if label != "tables":
            print(
                f"{'  added':<22} {r['light_p50_ms'] - base['light_p50_ms']:+8.2f}ms "
                f"{r['light_p99_ms'] - base['light_p99_ms']:+8.2f}ms "
                f"{r['light_cpu_us'] - base['light_cpu_us']:+8.0f}us "
                f"{r['load_p50_ms'] - base['load_p50_ms']:+7.2f}ms "
                f"{r['load_p99_ms'] - base['load_p99_ms']:+7.2f}ms "
                f"{r['load_cpu_us'] - base['load_cpu_us']:+7.0f}us"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": runs, "medians": table}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

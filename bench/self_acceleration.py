"""`python -m bench.self_acceleration`: what self-acceleration gives a user who only drops a plain
`model.onnx` in: capacity at the p99 target with FP32 and after self-acceleration, side by side
in one run, and what the promotion took.

The model is `bench/plain_models.user_sized_ranker` (0.7 million parameters, inputs `cat` INT64
[-1, 8] and `dense` FP32 [-1, 4]), each request 100 rows as V2 JSON. Two servers of the same
folder contents, each pinned to core 0 with the default settings (the default devices, [shadow]
and [self_acceleration] as shipped), the load generator on core 1: "fp32" with self-acceleration
off, "self-accelerated" with it on. The self-accelerated server is first driven at `--promote-rate`
until it serves a variant gated on live traffic (the time, the requests, the build's CPU seconds
and what failed meanwhile are printed); then both are measured in alternation, `--rounds` times:
CPU per request and p50 at a light rate, and throughput at the target (the best goodput of a step
whose p99 is within `--p99-ms` with under 1% refused or failed, stepping by 1.5x).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from bench import loadgen, processes
from bench.multi_model import USER_MODEL, user_bodies
from bench.plain_models import user_sized_ranker
from bench.stats import Summary, summarize
from bench.stepping import Stepping, step_up, within_target
from bench.user_model import cpu_seconds

LIGHT_RATE = 100.0
PATH = f"/v2/models/{USER_MODEL}/infer"


def offer(port: int, bodies: list[str], rate: float, seconds: float) -> Summary:
    spec = loadgen.LoadSpec("127.0.0.1", port, bodies, PATH, rate, seconds, connections=512,
                            cpu=loadgen.GENERATOR_CPU)  # fmt: skip
    return summarize(loadgen.run(spec))


def self_acceleration(url: str) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(f"{url}/v2/models/{USER_MODEL}/shadow").json()
    found: dict[str, Any] = document.get("self_acceleration", {})
    return found


def served(url: str) -> str:
    group = httpx.get(f"{url}/v2/models/{USER_MODEL}/config").json()["instance_group"][0]
    return f"{group['variant']} on {group['backend']}"


def promote(url: str, port: int, pid: int, bodies: list[str], rate: float, limit: float,
            quiet: bool) -> dict[str, Any]:  # fmt: skip
    """Drive the server at `rate` in 5 s steps until it serves a promoted variant."""
    started, cpu_before = time.monotonic(), cpu_seconds(pid)
    sent = failed = 0
    state: dict[str, Any] = {}
    while time.monotonic() - started < limit:
        s = offer(port, bodies, rate, 5)
        sent += round(s.offered_per_second * 5)
        failed += s.refused + s.errors + s.deadline_exceeded + s.client_timeouts + s.unsent
        state = self_acceleration(url)
        if not quiet:
            print(f"  {time.monotonic() - started:5.0f} s  {sent:7,} requests  p99 "
                  f"{s.latency_ms['p99']:5.1f} ms  {state.get('state')}", flush=True)  # fmt: skip
        if state.get("state") in ("watching", "serving the source", "failed"):
            break
    return {
        "state": state.get("state"), "reason": state.get("reason"),
        "seconds": time.monotonic() - started, "requests": sent, "failed": failed,
        "server_cpu_seconds": cpu_seconds(pid) - cpu_before,
        "served": served(url),
    }  # fmt: skip


def measure(url: str, port: int, pid: int, bodies: list[str], p99_ms: float, step: float,
            quiet: bool, label: str) -> dict[str, float]:  # fmt: skip
    offer(port, bodies, 50, 2)  # warm-up
    begin = cpu_seconds(pid)
    light = offer(port, bodies, LIGHT_RATE, 5)
    used = cpu_seconds(pid) - begin

    def show(rate: float, s: Summary, ok: bool) -> None:
        if not quiet:
            misses = "" if ok else "(misses)"
            print(f"  {label:<17} {rate:7.0f}/s  goodput {s.ok_per_second:7.0f}/s  p99 "
                  f"{s.latency_ms['p99']:6.1f} ms {misses}", flush=True)  # fmt: skip

    best, _ = step_up(lambda rate: offer(port, bodies, rate, step),
                      lambda s: within_target(s, step, p99_ms),
                      Stepping(300.0, factor=1.5, refine=3), show)  # fmt: skip
    return {
        "throughput_at_target": best,
        "light_p50_ms": light.latency_ms["p50"],
        "light_p99_ms": light.latency_ms["p99"],
        "light_cpu_us_per_request": 1e6 * used / max(1.0, light.ok_per_second * 5),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.self_acceleration", description=__doc__)
    parser.add_argument("--p99-ms", type=float, default=50.0)
    parser.add_argument("--step-seconds", type=float, default=4.0)
    parser.add_argument("--promote-rate", type=float, default=400.0)
    parser.add_argument("--promote-limit-seconds", type=float, default=600.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--hidden",
        default="256,128",
        help="the tower's widths (the default: the "
        "user-sized ranker; wider: a model whose arithmetic dominates a request)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/self_acceleration.json"))
    parser.add_argument("-q", "--quiet", action="store_true", help="print the result only")
    args = parser.parse_args(argv)
    bodies = user_bodies(50)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch, ExitStack() as stack:
        servers: dict[str, tuple[int, int, str]] = {}
        for label, enabled in (("fp32", "false"), ("self-accelerated", "true")):
            root = Path(scratch) / label
            hidden = tuple(int(w) for w in args.hidden.split(","))
            user_sized_ranker(root / USER_MODEL / "1" / "model.onnx", hidden=hidden)
            port = processes.free_port()
            env = {**os.environ, "RECSYS_MODEL__REPOSITORY": str(root),
                   "RECSYS_SELF_ACCELERATION__ENABLED": enabled}  # fmt: skip
            command = [sys.executable, "-m", "app", "--port", str(port)]
            log = args.out.with_suffix(f".{label}.log")
            proc, url = stack.enter_context(
                processes.running(command, port, env, log, processes.SERVER_CPUS)
            )
            servers[label] = (port, proc.pid, url)
        port, pid, url = servers["self-accelerated"]
        if not args.quiet:
            print(f"promoting: {args.promote_rate:g} requests/s until a variant serves")
        promotion = promote(url, port, pid, bodies, args.promote_rate,
                            args.promote_limit_seconds, args.quiet)  # fmt: skip
        promotion["document"] = self_acceleration(url)
        runs: dict[str, list[dict[str, float]]] = {label: [] for label in servers}
        for _ in range(args.rounds):
            for label, (port, pid, url) in servers.items():
                runs[label].append(measure(url, port, pid, bodies, args.p99_ms,
                                           args.step_seconds, args.quiet, label))  # fmt: skip
        record = Path(scratch) / "self-accelerated" / USER_MODEL / "1" / "acceleration.json"
        if record.is_file():
            shutil.copy(record, args.out.with_suffix(".record.json"))
            promotion["record"] = json.loads(record.read_text())
        variants = {label: served(url) for label, (_, _, url) in servers.items()}
    live = promotion.get("record", {}).get("live") or {}
    print(
        f"ranker with a {args.hidden} tower, 100 rows a request over V2 JSON, server on one core, "
        f"default settings; p99 <= {args.p99_ms:g} ms; medians of {args.rounds} alternating rounds:"
    )
    results: dict[str, Any] = {"promotion": promotion, "servers": {}}
    for label, measured in runs.items():
        median = {k: statistics.median(m[k] for m in measured) for k in measured[0]}
        spread = {k: (min(m[k] for m in measured), max(m[k] for m in measured))
                  for k in measured[0]}  # fmt: skip
        results["servers"][label] = {"serving": variants[label], "median": median,
                                     "spread": spread, "rounds": measured}  # fmt: skip
        low, high = spread["throughput_at_target"]
        print(f"  {label:<17} {variants[label]:<28} {median['throughput_at_target']:6.0f}/s "
              f"({low:.0f}-{high:.0f})  p50 {median['light_p50_ms']:5.2f} ms  "
              f"{median['light_cpu_us_per_request']:5.0f} us CPU/request")  # fmt: skip
    fp32, fast = (results["servers"][k]["median"] for k in ("fp32", "self-accelerated"))
    print(
        f"  capacity ratio {fast['throughput_at_target'] / fp32['throughput_at_target']:.2f}x, "
        f"light p50 ratio {fast['light_p50_ms'] / fp32['light_p50_ms']:.2f}x"
    )
    print(f"promotion: {promotion['state']} after {promotion['seconds']:.0f} s and "
          f"{promotion['requests']:,} requests at {args.promote_rate:g}/s ({promotion['failed']} "
          f"failed); build {live.get('build_seconds') or 0:.1f} s wall, "
          f"{live.get('build_cpu_seconds') or 0:.1f} s CPU; server CPU meanwhile "
          f"{promotion['server_cpu_seconds']:.1f} s")  # fmt: skip
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

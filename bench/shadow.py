"""`python -m bench.shadow`: what shadow scoring costs the live requests. The user-sized plain
ranker (`bench/plain_models.user_sized_ranker`), accelerated by `python -m models accelerate` on
random rows, is served at FP32 (its source) on ONNX Runtime, one core, 100 rows a request as V2
JSON; its capacity at the p99 target is measured without a shadow, then rounds alternate a server
without and with `int8` shadowing it ([shadow] sample_fraction, default 0.05) at `--load` of that
capacity: live p50/p99, goodput and the server's CPU per request side by side, with what the
shadow compared and how it agreed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import loadgen, processes
from bench.multi_model import USER_MODEL, user_bodies
from bench.plain_models import user_sized_ranker
from bench.stats import Summary, summarize
from bench.stepping import Stepping, step_up, within_target
from bench.user_model import cpu_seconds

DEVICES = [{"name": "cpu", "backend": "onnxruntime-cpu", "variant": "model"}]  # FP32 served
CANDIDATE = "int8"
PATH = f"/v2/models/{USER_MODEL}/infer"


def accelerated_model(root: Path) -> None:
    """The plain ranker and the variants `models accelerate` makes of it, gated on random rows."""
    version = root / USER_MODEL / "1"
    user_sized_ranker(version / "model.onnx")
    rng = np.random.default_rng(1)
    rows = root / "eval.npz"
    np.savez(rows, cat=rng.integers(0, 5000, (2000, 8)),
             dense=rng.random((2000, 4)).astype(np.float32))  # fmt: skip
    subprocess.run([sys.executable, "-m", "models", "-q", "accelerate", "--eval", str(rows),
                    str(version)], check=True, timeout=600)  # fmt: skip


def server_env(root: Path, shadow: float | None) -> dict[str, str]:
    env = {**os.environ, **processes.AS_DROPPED_IN, "RECSYS_MODEL__REPOSITORY": str(root),
           "RECSYS_DEVICES": json.dumps(DEVICES)}  # fmt: skip
    if shadow is not None:
        env |= {"RECSYS_SHADOW__CANDIDATES": json.dumps({USER_MODEL: CANDIDATE}),
                "RECSYS_SHADOW__SAMPLE_FRACTION": str(shadow)}  # fmt: skip
    return env


def offer(port: int, bodies: list[str], rate: float, seconds: float) -> loadgen.LoadResult:
    spec = loadgen.LoadSpec("127.0.0.1", port, bodies, PATH, rate, seconds, connections=512,
                            cpu=loadgen.GENERATOR_CPU)  # fmt: skip
    return loadgen.run(spec)


def run_at(root: Path, shadow: float | None, rate: float, seconds: float, bodies: list[str],
           log: Path) -> dict[str, Any]:  # fmt: skip
    """One server, warmed up, offered `rate` for `seconds`: its live figures (and shadow's)."""
    port = processes.free_port()
    command = [sys.executable, "-m", "app", "--port", str(port)]
    with processes.running(command, port, server_env(root, shadow), log,
                           processes.SERVER_CPUS) as (process, url):  # fmt: skip
        offer(port, bodies, rate, 2)  # warm-up
        begin = cpu_seconds(process.pid)
        live = summarize(offer(port, bodies, rate, seconds))
        used = cpu_seconds(process.pid) - begin
        report = httpx.get(f"{url}/v2/models/{USER_MODEL}/shadow", timeout=10).json()
    return {
        "p50_ms": live.latency_ms["p50"], "p99_ms": live.latency_ms["p99"],
        "goodput": live.ok_per_second, "failed": live.refused + live.errors
        + live.deadline_exceeded + live.client_timeouts,
        "cpu_us_per_request": 1e6 * used / max(1.0, live.ok_per_second * seconds),
        "shadow": report,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.shadow", description=__doc__)
    parser.add_argument("--p99-ms", type=float, default=50.0)
    parser.add_argument("--load", type=float, default=0.7, help="share of the capacity offered")
    parser.add_argument("--sample-fraction", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="each measured run")
    parser.add_argument("--step-seconds", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/shadow.json"))
    parser.add_argument("-q", "--quiet", action="store_true", help="print the result only")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log = args.out.with_suffix(".server.log")
    bodies = user_bodies(50)

    def say(text: str) -> None:
        if not args.quiet:
            print(text, flush=True)

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        say("accelerating the user-sized ranker (models accelerate, random rows) ...")
        accelerated_model(root)
        port = processes.free_port()
        command = [sys.executable, "-m", "app", "--port", str(port)]
        with processes.running(command, port, server_env(root, None), log, processes.SERVER_CPUS):

            def meets(s: Summary) -> bool:
                return within_target(s, args.step_seconds, args.p99_ms)

            def show(rate: float, s: Summary, ok: bool) -> None:
                say(f"  capacity step {rate:7.0f}/s: goodput {s.ok_per_second:7.0f}/s, p99 "
                    f"{s.latency_ms['p99']:6.1f} ms {'' if ok else '(misses)'}")  # fmt: skip

            def measure(rate: float) -> Summary:
                return summarize(offer(port, bodies, rate, args.step_seconds))

            offer(port, bodies, 50, 2)
            capacity, _ = step_up(measure, meets, Stepping(100.0, factor=1.5, refine=3), show)
        rate = args.load * capacity
        say(f"capacity {capacity:.0f}/s at p99 <= {args.p99_ms:g} ms; rounds at {rate:.0f}/s")
        runs: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
        for round_ in range(args.rounds):
            order = ["without", "with"] if round_ % 2 == 0 else ["with", "without"]
            for label in order:
                shadow = args.sample_fraction if label == "with" else None
                result = run_at(root, shadow, rate, args.seconds, bodies, log)
                runs[label].append(result)
                say(f"  round {round_ + 1} {label:<7} shadow: p50 {result['p50_ms']:5.2f} ms, "
                    f"p99 {result['p99_ms']:6.2f} ms, goodput {result['goodput']:6.0f}/s, "
                    f"{result['cpu_us_per_request']:5.0f} us CPU/request")  # fmt: skip
    print(f"shadow scoring: user-sized ranker at FP32 on onnxruntime-cpu, one core, 100 rows a "
          f"request (V2 JSON); {CANDIDATE} shadowing a random {args.sample_fraction:.0%} of "
          f"requests; {rate:.0f}/s offered = {args.load:.0%} of the capacity without a shadow "
          f"({capacity:.0f}/s at p99 <= {args.p99_ms:g} ms); {args.rounds} rounds of "
          f"{args.seconds:g} s, medians (range):")  # fmt: skip
    for key, unit in (("p50_ms", "ms"), ("p99_ms", "ms"), ("goodput", "/s"),
                      ("cpu_us_per_request", "us CPU/request")):  # fmt: skip
        line = [f"  {key:<20}"]
        for label in ("without", "with"):
            values = [r[key] for r in runs[label]]
            line.append(f"{label} {statistics.median(values):8.2f} ({min(values):.2f}-"
                        f"{max(values):.2f}) {unit}")  # fmt: skip
        print("   ".join(line))
    for result in runs["with"]:
        report = result["shadow"]
        figures = report.get("outputs", {})
        agreement = ", ".join(
            f"{name}: Spearman min {f['spearman']['min']:.5f}, top-k overlap mean "
            f"{f['top_k_overlap']['mean']:.3f}" for name, f in figures.items()
        )  # fmt: skip
        print(f"  shadow requests {report['requests']}; {agreement}")
    args.out.write_text(json.dumps({"capacity": capacity, "rate": rate, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

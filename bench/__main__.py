"""`python -m bench`: the paper's headline, measured. The optimized server (`python -m app`, default
settings) against the naive baseline (heavy FP32 DCN-v2 in PyTorch, one call per request) and the
HTTP front end alone (same body parsing, fixed answer), one after another in one run, each pinned
to core 0 with the open-loop generator on core 1, with the same requests:

- mixes: /v1/rank with 100 candidates, 1,000 candidates, and the whole catalog; users from the
  test split;
- light load: a fixed low rate per mix; latency percentiles;
- step load: the offered rate grows by `--factor` a step until a step misses the p99 target
  (50 ms) or has 0.1% or more errors; throughput at the target is the best goodput of a step
  that met it.

Writes report.json, report.md and latency.png to `--out`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import loadgen, processes
from bench.report import write_report
from bench.stats import Summary, summarize
from bench.stepping import Stepping, step_up
from bench.workload import WHOLE_CATALOG, label, rank_bodies
from config.settings import load_settings
from models.artifacts.repository import ModelVersion, open_version


@dataclass(frozen=True)
class Mix:
    candidates: int
    light_rate: float  # requests/s: light for every server, the baseline included
    first_rate: float  # where the step load starts


MIXES = (Mix(100, 10, 20), Mix(1000, 5, 10), Mix(WHOLE_CATALOG, 5, 5))
SERVERS = {
    "baseline": ["-m", "bench.apps", "baseline"],
    "optimized": ["-m", "app"],
    "frontend": ["-m", "bench.apps", "frontend"],
    "system": ["-m", "app"],  # the system level alone: this server on the baseline's model
}
# RECSYS_* settings per server: "system" serves baseline-fp32 on the default CPU device.
HEAVY_DEVICE = {"name": "cpu", "backend": "cpu", "variant": "baseline-fp32"}
SERVER_SETTINGS = {"system": {"RECSYS_DEVICES": json.dumps([HEAVY_DEVICE])}}
HEADLINE = ["baseline", "optimized", "frontend"]


def measure(port: int, bodies: list[str], rate: float, *, seconds: float,
            settle_body: str | None = None) -> Summary:  # fmt: skip
    if settle_body is not None:
        settle(port, settle_body)
    return summarize(loadgen.offer(port, bodies, rate, seconds))


def settle(port: int, body: str, seconds: float = 120.0) -> None:
    """Wait until the server answers one request in under 100 ms: after an overloaded step a
    server that cannot drop abandoned requests (the baseline) is still working off its backlog,
    which would otherwise be charged to the next step."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            processes.post_json(f"http://127.0.0.1:{port}/v1/rank", body)
        except OSError:
            pass
        else:
            if time.monotonic() - started < 0.1:
                return
        time.sleep(0.5)


def meets(s: Summary, p99_ms: float, max_error_rate: float) -> bool:
    return s.latency_ms["p99"] <= p99_ms and s.error_rate + s.refusal_rate < max_error_rate


def run_server(name: str, root: Path, bodies: dict[int, list[str]], args: argparse.Namespace,
               ) -> dict[str, object]:  # fmt: skip
    port = processes.free_port()
    command = [sys.executable, *SERVERS[name], "--port", str(port)]
    if SERVERS[name][1] != "app":
        command += ["--repository", str(root)]
    env = {**os.environ, "RECSYS_MODEL__REPOSITORY": str(root), **SERVER_SETTINGS.get(name, {})}
    log = args.out / f"{name}.log"
    mixes: dict[str, object] = {}
    with processes.running(command, port, env, log, processes.SERVER_CPUS):
        variant = served_variant(port, bodies[MIXES[0].candidates][0])
        for mix in MIXES:
            mix_bodies = bodies[mix.candidates]
            measure(port, mix_bodies, mix.light_rate, seconds=1.0)  # warm-up
            light = measure(port, mix_bodies, mix.light_rate, seconds=args.light_seconds)

            def show(rate: float, s: Summary, ok: bool, mix: Mix = mix) -> None:
                print(f"{name:9} {label(mix.candidates):15} {rate:7.0f}/s -> goodput "
                      f"{s.ok_per_second:7.0f}/s p99 {s.latency_ms['p99']:8.1f} ms "
                      f"errors {s.error_rate:.2%} refused {s.refused}"
                      f"{'' if ok else '  (misses the target)'}", flush=True)  # fmt: skip

            best, steps = step_up(
                functools.partial(
                    measure, port, mix_bodies, seconds=args.step_seconds, settle_body=mix_bodies[0]
                ),
                lambda s: meets(s, args.p99_ms, args.max_error_rate),
                Stepping(mix.first_rate, args.factor, args.refine, args.max_steps),
                show,
            )
            mixes[label(mix.candidates)] = {
                "light": {"rate": mix.light_rate, **dataclasses.asdict(light)},
                "steps": steps,
                "throughput_at_target": best,
            }
    return {"variant": variant, "mixes": mixes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--repository", type=Path, help="model repository (default: settings)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--servers", nargs="+", choices=list(HEADLINE), default=HEADLINE)
    parser.add_argument("--p99-ms", type=float, default=50.0)
    parser.add_argument("--max-error-rate", type=float, default=0.001)
    parser.add_argument("--factor", type=float, default=1.5, help="rate growth per step")
    parser.add_argument("--refine", type=int, default=2, help="bisection steps after a miss")
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--step-seconds", type=float, default=5.0)
    parser.add_argument("--light-seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    settings = load_settings()
    root = Path(args.repository or settings.model.repository)
    version = open_version(root, settings.model.name, settings.model.version)
    args.out.mkdir(parents=True, exist_ok=True)
    bodies = {mix.candidates: rank_bodies(version, mix.candidates) for mix in MIXES}
    started = time.monotonic()
    servers = {name: run_server(name, root, bodies, args) for name in args.servers}
    report = {
        "protocol": {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores; server pinned to core 0, "
            "generator to core 1",
            "p99_target_ms": args.p99_ms,
            "max_error_rate": args.max_error_rate,
            "step_seconds": args.step_seconds,
            "light_seconds": args.light_seconds,
            "factor": args.factor,
            "refine": args.refine,
            "mixes": [dataclasses.asdict(m) for m in MIXES],
            "model_version": version.manifest.model_version,
        },
        "accuracy": accuracy(version, {k: str(v["variant"]) for k, v in servers.items()}),
        "servers": servers,
        "seconds": time.monotonic() - started,
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(write_report(report, args.out))
    return 0


def accuracy(version: ModelVersion, served: dict[str, str]) -> dict[str, dict[str, object]]:
    """Test AUC and log loss of the variant each server answered with (scored by the build on the
    test split, paired against baseline-fp32 on the same rows)."""
    return {
        server: {
            "variant": name,
            "test_auc": version.manifest.variant(name).test_auc,
            "test_log_loss": version.manifest.variant(name).test_log_loss,
        }
        for server, name in served.items()
        if name in {v.name for v in version.manifest.variants}
    }


def served_variant(port: int, body: str) -> str:
    answer = processes.post_json(f"http://127.0.0.1:{port}/v1/rank", body)
    variants: dict[str, str] = json.loads(answer)["variants"]
    return ", ".join(sorted(set(variants.values())))


if __name__ == "__main__":
    sys.exit(main())

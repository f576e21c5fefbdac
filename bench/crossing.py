"""`python -m bench.crossing`: what a request's crossing between an HTTP worker and the engine
process costs in CPU, measured side by side: one process against an engine process fed by one
worker, both pinned to core 0, at fixed rates, in interleaved rounds (the machine's drift hits
both alike). The crossing's cost is the difference in CPU per answered request (every process of
the server counted), as a share of the split server's total; the split's is also given per process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench import loadgen, processes
from bench.multi_model import USER_MODEL, user_bodies
from bench.plain_models import user_sized_ranker
from bench.workload import rank_bodies
from config.settings import load_settings
from models.artifacts.repository import open_version

SETUPS = {
    "one process": {"RECSYS_SERVER__WORKERS": "1"},
    "engine + 1 worker": {"RECSYS_SERVER__WORKERS": "1", "RECSYS_SERVER__ENGINE": "process"},
}


Workload = tuple[Path, list[str], str]  # repository, bodies, path


def workloads(builtin: Path, model: str, user_root: Path) -> dict[str, Workload]:
    """The two workloads: /v1/rank on the built-in `model` in `builtin`, and V2 JSON on the
    user-sized ranker (written under `user_root`)."""
    user_sized_ranker(user_root / USER_MODEL / "1" / "model.onnx")
    version = open_version(builtin, model)
    return {
        "100-candidate /v1/rank, built-in model": (builtin, rank_bodies(version, 100), "/v1/rank"),
        "user-sized ranker, V2 JSON, 100 rows": (user_root, user_bodies(50),
                                                 f"/v2/models/{USER_MODEL}/infer"),
    }  # fmt: skip


def process_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of the server's processes by role (server, engine, worker)."""
    seconds: dict[str, float] = {}
    for current in [pid, *processes.descendants(pid)]:
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            words = Path(f"/proc/{current}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        role = words[words.index(b"--role") + 1].decode() if b"--role" in words else "server"
        used = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        seconds[role] = seconds.get(role, 0.0) + used
    return seconds


def cpu_per_request(env: dict[str, str], bodies: list[str], path: str, rate: float,
                    seconds: float, log: Path, cwd: Path = processes.ROOT,
                    ) -> dict[str, float]:  # fmt: skip
    """Microseconds of CPU per answered request, by role, at `rate` for `seconds`, of the
    server in the checkout at `cwd`."""
    port = processes.free_port()
    command = [sys.executable, "-m", "app", "--port", str(port)]
    with processes.running(command, port, env, log, {0}, cwd) as (proc, _):

        def offer(rate: float, seconds: float) -> int:
            spec = loadgen.LoadSpec("127.0.0.1", port, bodies, path, rate, seconds,
                                    connections=256, cpu=loadgen.GENERATOR_CPU)  # fmt: skip
            return sum(1 for status in loadgen.run(spec).statuses if status == 200)

        offer(100, 2)
        before = process_cpu(proc.pid)
        answered = offer(rate, seconds)
        after = process_cpu(proc.pid)
    return {role: 1e6 * (after[role] - before.get(role, 0.0)) / max(1, answered)
            for role in after}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.crossing", description=__doc__)
    parser.add_argument("--rates", default="300,800", help="requests/s, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/crossing.json"))
    parser.add_argument("-q", "--quiet", action="store_true", help="print the result only")
    args = parser.parse_args(argv)
    settings = load_settings()
    builtin = settings.model.repository.resolve()
    rates = [float(r) for r in args.rates.split(",")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log = args.out.with_suffix(".server.log")
    results: dict[str, dict[str, dict[str, list[dict[str, float]]]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for workload, (root, bodies, path) in workloads(
            builtin, settings.model.name, Path(scratch)
        ).items():
            for rate in rates:
                for round_ in range(args.rounds):
                    for setup, overrides in SETUPS.items():
                        env = {
                            **os.environ,
                            **processes.AS_DROPPED_IN,
                            "RECSYS_MODEL__REPOSITORY": str(root),
                            **overrides,
                        }
                        used = cpu_per_request(env, bodies, path, rate, args.seconds, log)
                        runs = results.setdefault(workload, {}).setdefault(f"{rate:g}", {})
                        runs.setdefault(setup, []).append(used)
                        if not args.quiet:
                            shown = ", ".join(f"{k} {v:.0f}" for k, v in sorted(used.items()))
                            print(f"{workload[:30]:<30} {rate:6.0f}/s round {round_ + 1} "
                                  f"{setup:<18} us/request: {shown}", flush=True)  # fmt: skip
    print("CPU per answered request (median of rounds), pinned to core 0:")
    for workload, by_rate in results.items():
        for shown_rate, by_setup in by_rate.items():
            single = statistics.median(sum(r.values()) for r in by_setup["one process"])
            split_runs = by_setup["engine + 1 worker"]
            split = statistics.median(sum(r.values()) for r in split_runs)
            engine = statistics.median(r.get("engine", 0.0) for r in split_runs)
            worker = statistics.median(r.get("worker", 0.0) for r in split_runs)
            print(f"  {workload:<40} {shown_rate:>5}/s: one process {single:6.0f} us, engine + 1 "
                  f"worker {split:6.0f} us (engine {engine:.0f}, worker {worker:.0f}); crossing "
                  f"{split - single:+5.0f} us = {100 * (split - single) / split:+.0f}% of the "
                  "split's")  # fmt: skip
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

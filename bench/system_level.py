"""`python -m bench.system_level`: the system level alone. This server with its default settings
but serving the heavy `baseline-fp32` variant (so no model-level gain), against the naive
baseline serving the same model (PyTorch, one call per request), one after the other with the
headline's protocol (`python -m bench`: server on core 0, open-loop generator on core 1, the same
mixes, light load then steps to the p99 target). Target: at least 2x the baseline's throughput at
the target."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.__main__ import MIXES, run_server
from bench.workload import label, rank_bodies
from config.settings import load_settings
from models.artifacts.repository import open_version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.system_level", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results/system_level"))
    parser.add_argument("--p99-ms", type=float, default=50.0)
    parser.add_argument("--max-error-rate", type=float, default=0.001)
    parser.add_argument("--factor", type=float, default=1.5)
    parser.add_argument("--refine", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--step-seconds", type=float, default=5.0)
    parser.add_argument("--light-seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    settings = load_settings()
    root = settings.model.repository
    version = open_version(root, settings.model.name, settings.model.version)
    args.out.mkdir(parents=True, exist_ok=True)
    bodies = {mix.candidates: rank_bodies(version, mix.candidates) for mix in MIXES}
    started = time.monotonic()
    servers = {name: run_server(name, root, bodies, args) for name in ("baseline", "system")}
    print(f"the system level alone ({time.monotonic() - started:.0f} s): this server serving "
          f"{servers['system']['variant']} vs the naive baseline serving "
          f"{servers['baseline']['variant']}; p99 <= {args.p99_ms:g} ms")  # fmt: skip
    for mix in MIXES:
        name = label(mix.candidates)
        rows = {s: servers[s]["mixes"][name] for s in servers}  # type: ignore[index]
        base, ours = (rows[s]["throughput_at_target"] for s in ("baseline", "system"))
        light = {s: rows[s]["light"]["latency_ms"]["p99"] for s in rows}
        ratio = f"{ours / base:.1f}x" if base else "n/a"
        print(f"  {name:15} baseline {base:6.0f}/s  this server {ours:6.0f}/s  ({ratio}); light "
              f"p99 {light['baseline']:.2f} vs {light['system']:.2f} ms")  # fmt: skip
    (args.out / "system_level.json").write_text(json.dumps(servers, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

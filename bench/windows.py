"""`python -m bench.windows`: fixed against elastic batching windows on the real server.

For each window the optimized server starts (pinned to core 0; generator on core 1) and serves
/v1/rank with 100 candidates at a light and a heavy open-loop rate, with the same requests; p50 and
p99 per cell. The simulation (`python -m scheduler.simulation --windows`) is the same comparison on
a virtual clock with a CPU and a GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench import loadgen, processes
from bench.stats import summarize
from bench.workload import rank_bodies
from config import load_settings
from models.repository import open_version

WINDOWS = (("fixed", 0.0), ("fixed", 0.25), ("fixed", 0.5), ("elastic", 0.25), ("elastic", 0.5))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.windows", description=__doc__)
    parser.add_argument("--rates", type=float, nargs=2, default=(200.0, 1800.0),
                        help="light and heavy requests/s")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args(argv)
    settings = load_settings()
    version = open_version(Path(settings.model.repository), settings.model.name)
    bodies = rank_bodies(version, 100)
    print(f"{'window':>16} " + " ".join(f"{f'{r:g}/s p50':>11} {'p99 ms':>7}" for r in args.rates))
    for mode, window in WINDOWS:
        port = processes.free_port()
        env = {**os.environ, "RECSYS_BATCHING__MAX_QUEUE_DELAY_MS": str(window),
               "RECSYS_BATCHING__ELASTIC": str(mode == "elastic").lower()}  # fmt: skip
        command = [sys.executable, "-m", "app", "--port", str(port)]
        log = Path("bench/results") / f"windows-{mode}-{window}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        cells = []
        with processes.running(command, port, env, log, processes.SERVER_CPUS):
            for rate in (50.0, *args.rates):  # the first is a warm-up
                cells.append(summarize(loadgen.offer(port, bodies, rate, args.seconds)))
        row = " ".join(
            f"{s.latency_ms['p50']:>11.2f} {s.latency_ms['p99']:>7.2f}" for s in cells[1:]
        )
        print(f"{f'{mode} {window:g} ms':>16} {row}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

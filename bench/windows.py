"""`python -m bench.windows`: fixed against elastic batching windows on the real server.

For each window the optimized server starts (pinned to core 0; generator on core 1) and serves
/v1/rank with 100 candidates at a light and a heavy open-loop rate, with the same requests; p50 and
p99 per cell, the median over `--rounds` interleaved rounds (with the range of p99 over rounds:
differences smaller than it are noise). The simulation (`python -m scheduler.simulation
--windows`) is the same comparison on a virtual clock with a CPU and a GPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from bench import loadgen, processes
from bench.stats import Summary, summarize
from bench.workload import rank_bodies
from config.settings import load_settings
from models.artifacts.repository import open_version

WINDOWS = (("fixed", 0.0), ("fixed", 0.25), ("fixed", 0.5), ("elastic", 0.25), ("elastic", 0.5))


def run_window(mode: str, window: float, bodies: list[str], rates: list[float],
               seconds: float) -> list[Summary]:  # fmt: skip
    port = processes.free_port()
    env = {**os.environ, "RECSYS_BATCHING__MAX_QUEUE_DELAY_MS": str(window),
           "RECSYS_BATCHING__ELASTIC": str(mode == "elastic").lower()}  # fmt: skip
    command = [sys.executable, "-m", "app", "--port", str(port)]
    log = Path("bench/results") / f"windows-{mode}-{window}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with processes.running(command, port, env, log, processes.SERVER_CPUS):
        loadgen.offer(port, bodies, 50.0, 2.0)  # warm-up
        return [summarize(loadgen.offer(port, bodies, rate, seconds)) for rate in rates]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.windows", description=__doc__)
    parser.add_argument("--rates", type=float, nargs=2, default=(200.0, 1800.0),
                        help="light and heavy requests/s")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds over every window; a cell is the median")  # fmt: skip
    args = parser.parse_args(argv)
    settings = load_settings()
    version = open_version(Path(settings.model.repository), settings.model.name)
    bodies = rank_bodies(version, 100)
    cells: dict[tuple[str, float], list[list[Summary]]] = {w: [] for w in WINDOWS}
    for round_ in range(args.rounds):  # interleaved, so drift on the machine hits every window
        for mode, window in WINDOWS:
            cells[mode, window].append(run_window(mode, window, bodies, args.rates, args.seconds))
        print(f"round {round_ + 1} of {args.rounds} done", flush=True)
    print(f"{'window':>16} " + " ".join(f"{f'{r:g}/s p50':>11} {'p99 ms':>7} {'(p99 range)':>14}"
                                        for r in args.rates))  # fmt: skip
    for (mode, window), rounds in cells.items():
        row = []
        for i in range(len(args.rates)):
            p50 = statistics.median(r[i].latency_ms["p50"] for r in rounds)
            p99s = [r[i].latency_ms["p99"] for r in rounds]
            spread = f"{min(p99s):.2f}-{max(p99s):.2f}"
            row.append(f"{p50:>11.2f} {statistics.median(p99s):>7.2f} {spread:>14}")
        print(f"{f'{mode} {window:g} ms':>16} {' '.join(row)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

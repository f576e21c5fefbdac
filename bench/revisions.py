"""`python -m bench.revisions REV`: CPU per answered request of this checkout against a git
revision of it, in interleaved rounds (the machine's drift hits both alike), for a change that
must not cost the hot path anything (a refactor) or claims to save some.

The revision is checked out into a temporary worktree and served from there with this checkout's
virtual environment; both are pinned to core 0 and offered the same open-loop rate from core 1
(`bench.crossing`'s measurement: every process of the server counted, per answered request). Two
workloads, each in one process and as an engine fed by one worker: `/v1/rank` with 100 candidates
on the built-in model, and V2 JSON with 100 rows on the user-sized plain ranker
(`bench.plain_models.user_sized_ranker`). Prints each run, then medians and ranges.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import crossing, processes
from config.settings import load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.revisions", description=__doc__)
    parser.add_argument("revision", help="the git revision to compare with, e.g. HEAD~3")
    parser.add_argument("--rate", type=float, default=300.0, help="requests/s (default 300)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repository", type=Path, help="the built model (default: settings)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print the summary only")
    args = parser.parse_args(argv)
    builtin = (args.repository or load_settings().model.repository).resolve()
    results: dict[tuple[str, str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch) / "revision"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), args.revision],
                       cwd=processes.ROOT, check=True, capture_output=True)  # fmt: skip
        try:
            offered = crossing.workloads(builtin, "movielens-dcnv2", Path(scratch) / "user")
            trees = {args.revision: base, "this checkout": processes.ROOT}
            for round_ in range(args.rounds):
                order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
                for (workload, (root, bodies, path)), setup, tree in itertools.product(
                    offered.items(), crossing.SETUPS, order
                ):
                    # As dropped in: self-acceleration would build variants in a child
                    # process, whose CPU counts as the server's, and swap the model mid-run.
                    env = {**os.environ, **processes.AS_DROPPED_IN,
                           "RECSYS_MODEL__REPOSITORY": str(root),
                           "PYTHONPATH": str(trees[tree]), **crossing.SETUPS[setup]}  # fmt: skip
                    log = Path(scratch) / "server.log"
                    used = crossing.cpu_per_request(env, bodies, path, args.rate, args.seconds,
                                                    log, trees[tree])  # fmt: skip
                    total = sum(used.values())
                    results.setdefault((workload, setup, tree), []).append(total)
                    if not args.quiet:
                        print(f"round {round_ + 1} {workload:<36} {setup:<18} {tree:<14} "
                              f"{total:6.0f} us", flush=True)  # fmt: skip
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)],
                           cwd=processes.ROOT, check=False, capture_output=True)  # fmt: skip
    print(
        f"CPU per answered request at {args.rate:g} requests/s, pinned to core 0: median "
        f"(range) of {args.rounds} interleaved rounds"
    )
    for (workload, setup, tree), values in sorted(results.items()):
        print(
            f"  {workload:<36} {setup:<18} {tree:<14} {statistics.median(values):6.0f} us "
            f"({min(values):.0f}-{max(values):.0f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m models.live_variants`: the server's self-acceleration builds and times a plain
model's variants here, in a child process it starts at the lowest CPU priority on the cores and
CPU seconds it allows (`[self_acceleration]`), calibrated on rows it sampled from live requests.

Writes the variants `python -m models accelerate` would (the kinds asked for, the same file
names, into the folder `--out`: the server moves those it promotes into the version folder),
checks each against the source on the sampled rows (a variant that fails even there is not worth
shadowing), times each (variant, runtime) single-threaded at the batch sizes asked for,
interleaved, and prints one JSON document: the candidates, each with its latency per runtime and
batch size, and why each other kind was skipped. No accuracy claim comes
from here: the server shadows the candidates on live requests and judges them there.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from config.settings import load_settings
from models.rows_file import Rows
from models.settings import BenchmarkSettings

log = logging.getLogger("models.live_variants")


def build_and_time(
    version: Path,
    out: Path,
    rows: dict[str, np.ndarray],
    kinds: list[str],
    batch_rows: tuple[int, ...],
    seconds_per_cell: float,
) -> dict[str, Any]:
    from models import accelerate  # onnx: a serving dependency, but only needed here

    settings = load_settings()
    skipped: dict[str, str] = {}
    made: list[accelerate.Candidate] = []
    with tempfile.TemporaryDirectory() as scratch:
        prepared = accelerate.prepare(version, Path(scratch), quantize_outputs=False)
        for kind in kinds:
            try:
                candidate = accelerate.BUILDERS[kind](kind, out, prepared, rows, Path(scratch))
            except ImportError as exc:
                skipped[kind] = f"needs the {exc.name} package, not installed here"
                continue
            except Exception as exc:  # one kind failing leaves the others
                skipped[kind] = f"could not be built: {exc!r}"[:300]
                continue
            if candidate is None:
                skipped[kind] = "does not apply to this model or CPU"
            elif candidate.device != "cpu":
                skipped[kind] = "made for a GPU; not timed on this CPU"
            else:
                made.append(candidate)
    source = accelerate.source_candidate(version / accelerate.SOURCE)
    reference = accelerate.run_rows(source.session("onnxruntime"), rows)
    unlabelled = Rows(rows, {})
    kept: list[accelerate.Candidate] = []
    agreement: dict[str, str] = {}
    for candidate in made:
        runtime = candidate.runtimes[0]
        outputs = accelerate.run_rows(candidate.session(runtime), rows)
        verdict, _ = accelerate.gate_variant(reference, outputs, unlabelled, settings)
        if verdict.passed:
            kept.append(candidate)
            agreement[candidate.name] = verdict.reason
        else:
            skipped[candidate.name] = f"disagrees on the sampled rows: {verdict.reason}"
    timing = BenchmarkSettings(batch_rows=batch_rows, seconds_per_cell=seconds_per_cell)
    latency = accelerate.time_candidates([source, *kept], rows, timing)
    return {
        "variants": [
            {
                "name": c.name, "file": c.file.name, "format": c.format,
                "precision": c.precision, "hint": c.hint, "runtimes": list(c.runtimes),
                "latency_ms": latency[c.name], "sampled_rows": agreement.get(c.name, ""),
            }
            for c in [source, *kept]
        ],
        "skipped": skipped,
    }  # fmt: skip


def budget(cores: int, cpu_seconds: int) -> None:
    """The lowest CPU priority, `cores` of the cores allowed, and a CPU-time limit past which
    the kernel stops this process (SIGXCPU): the server's requests come first."""
    os.nice(19)
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, allowed[-cores:])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.live_variants")
    parser.add_argument("version", type=Path, help="<root>/<model>/<version> holding model.onnx")
    parser.add_argument("rows", type=Path, help="an .npz of sampled input rows")
    parser.add_argument("--out", type=Path, required=True, help="the folder variants go to")
    parser.add_argument("--kinds", required=True, help="comma-separated variant kinds")
    parser.add_argument("--batch-rows", required=True, help="comma-separated batch sizes timed")
    parser.add_argument("--seconds-per-cell", type=float, default=0.2)
    parser.add_argument(
        "--cores", type=int, default=1, help="run on this many of the cores allowed (the last ones)"
    )
    parser.add_argument("--cpu-seconds", type=int, default=600, help="stop past this CPU time")
    args = parser.parse_args(argv)
    budget(args.cores, args.cpu_seconds)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    started = time.perf_counter()
    with np.load(args.rows) as npz:
        rows = {name: npz[name] for name in npz.files}
    document = build_and_time(
        args.version, args.out, rows, args.kinds.split(","),
        tuple(int(r) for r in args.batch_rows.split(",")), args.seconds_per_cell,
    )  # fmt: skip
    document["seconds"] = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    document["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    print(json.dumps(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())

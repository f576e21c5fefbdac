"""`python -m bench.rivals`: this server against the Python servers a user would pick instead
(LitServe, MLServer) on the same model, rows, core and load generator, in one run with the rounds
interleaved: throughput at the p99 target, and p50 and CPU per request at a light rate.

The model is the user-sized plain ranker (`bench/plain_models.user_sized_ranker`), 100 rows a
request as V2 JSON, the same bodies to every server (LitServe's route takes them as its request's
JSON). Each server is pinned to core 0 with its child processes, the open-loop generator to core 1.
This server runs with every default (`python -m app`, the model dropped into a repository); each
rival as its documentation shows, ONNX Runtime with one thread, its defaults otherwise
(`bench/rival_servers/`). The rivals install into venvs of their own under `--venvs` (pinned
versions, the same ONNX Runtime as here; the first run downloads them). Before the load, every
server's scores for one request are compared with this server's.

Throughput at the target, as `bench.user_model`: the best goodput of a step whose p99 is within
`--p99-ms` with under 1% refused or failed, the offered rate stepping up by 1.5x, then bisected.
CPU per request: every process of the server (children included) over the light run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

from bench import crossing, loadgen, processes
from bench.multi_model import USER_MODEL, user_bodies
from bench.plain_models import user_sized_ranker
from bench.stats import Summary, summarize
from bench.stepping import Stepping, step_up, within_target

SERVERS_DIR = Path(__file__).resolve().parent / "rival_servers"
V2_PATH, V2_READY = f"/v2/models/{USER_MODEL}/infer", f"/v2/models/{USER_MODEL}/ready"
LIGHT_RATE = 100.0  # requests/s for the p50 and CPU-per-request figures


@dataclass(frozen=True)
class Server:
    """How to run one server on a port: its command and environment, where the bodies go."""

    requirements: tuple[str, ...]  # a rival's venv; empty: this server, from this checkout
    path: str
    ready_path: str
    command: Callable[
        [Path, Path, int], tuple[list[str], dict[str, str]]
    ]  # (python, model dir, port)


def ours(python: Path, root: Path, port: int) -> tuple[list[str], dict[str, str]]:
    env = {**processes.AS_DROPPED_IN, "RECSYS_MODEL__REPOSITORY": str(root),
           "RECSYS_GRPC__PORT": str(processes.free_port())}  # fmt: skip
    return [str(python), "-m", "app", "--port", str(port)], env


def litserve(python: Path, root: Path, port: int) -> tuple[list[str], dict[str, str]]:
    model = root / USER_MODEL / "1" / "model.onnx"
    return [str(python), str(SERVERS_DIR / "litserve_ranker.py"), str(model), str(port)], {}


def mlserver(python: Path, root: Path, port: int) -> tuple[list[str], dict[str, str]]:
    folder = root.parent / "mlserver" / USER_MODEL  # MLServer's layout: settings beside the code
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes((root / USER_MODEL / "1" / "model.onnx").read_bytes())
    (folder / "mlserver_ranker.py").write_text((SERVERS_DIR / "mlserver_ranker.py").read_text())
    settings = {"name": USER_MODEL, "implementation": "mlserver_ranker.Ranker",
                "parameters": {"uri": "./model.onnx"}}  # fmt: skip
    (folder / "model-settings.json").write_text(json.dumps(settings))
    env = {"MLSERVER_HTTP_PORT": str(port), "MLSERVER_GRPC_PORT": str(processes.free_port()),
           "MLSERVER_METRICS_PORT": str(processes.free_port())}  # fmt: skip
    return [str(python.parent / "mlserver"), "start", str(folder.parent)], env


ORT = f"onnxruntime=={version('onnxruntime')}"
SERVERS = {
    "this server": Server((), V2_PATH, "/v2/health/ready", ours),
    "LitServe": Server(("litserve==0.2.19", ORT, "numpy"), "/predict", "/health", litserve),
    # MLServer 1.7's inference workers do not start under uvloop 0.22 ("no current event loop").
    "MLServer": Server(
        ("mlserver==1.7.1", "uvloop<0.22", ORT, "numpy"), V2_PATH, V2_READY, mlserver
    ),
}


def venv_python(venvs: Path, name: str, requirements: tuple[str, ...], quiet: bool) -> Path:
    """The interpreter of `name`'s venv, created and installed once (a marker holds what)."""
    folder = venvs / name.lower()
    python, marker = folder / "bin" / "python", folder / "requirements.txt"
    wanted = "\n".join(requirements)
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    if not quiet:
        print(f"installing {name} into {folder}: {' '.join(requirements)}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(folder)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements], check=True)
    marker.write_text(wanted)
    return python


@dataclass
class Figures:
    throughput: float  # requests/s at the target
    light_p50_ms: float
    light_cpu_us: float  # per request, every process of the server
    scores: list[float]  # for one request, in the order of its rows


def measure(server: Server, python: Path, root: Path, bodies: list[str], args: argparse.Namespace,
            log: Path, show: Callable[[float, Summary, bool], None]) -> Figures:  # fmt: skip
    port = processes.free_port()
    command, env = server.command(python, root, port)
    with processes.running(command, port, {**os.environ, **env}, log, processes.SERVER_CPUS,
                           processes.ROOT, server.ready_path) as (process, url):  # fmt: skip
        answer = json.loads(processes.post_json(f"{url}{server.path}", bodies[0]))
        scores = [float(s) for s in np.ravel(answer["outputs"][0]["data"])]

        def offer(rate: float, seconds: float) -> Summary:
            spec = loadgen.LoadSpec("127.0.0.1", port, bodies, server.path, rate, seconds,
                                    connections=512, cpu=loadgen.GENERATOR_CPU)  # fmt: skip
            return summarize(loadgen.run(spec))

        offer(50, 3)  # warm-up
        before = sum(crossing.process_cpu(process.pid).values())
        light = offer(LIGHT_RATE, args.light_seconds)
        used = sum(crossing.process_cpu(process.pid).values()) - before
        best, _ = step_up(lambda rate: offer(rate, args.step_seconds),
                          lambda s: within_target(s, args.step_seconds, args.p99_ms),
                          Stepping(100.0, factor=1.5, refine=3), show)  # fmt: skip
    answered = max(1.0, light.ok_per_second * args.light_seconds)
    return Figures(best, light.latency_ms["p50"], 1e6 * used / answered, scores)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.rivals",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every server")
    parser.add_argument("--only", default="", help="the rivals whose name contains this")
    parser.add_argument("--p99-ms", type=float, default=50.0)
    parser.add_argument("--step-seconds", type=float, default=4.0)
    parser.add_argument("--light-seconds", type=float, default=5.0)
    parser.add_argument("--venvs", type=Path, default=Path.home() / ".cache/recsys-serve/rivals")
    parser.add_argument("--out", type=Path, default=Path("bench/results/rivals.json"))
    parser.add_argument("-q", "--quiet", action="store_true", help="print the result only")
    args = parser.parse_args(argv)
    servers = {name: s for name, s in SERVERS.items()
               if not s.requirements or args.only.lower() in name.lower()}  # fmt: skip
    pythons = {name: Path(sys.executable) if not s.requirements
               else venv_python(args.venvs, name, s.requirements, args.quiet)
               for name, s in servers.items()}  # fmt: skip
    bodies = user_bodies(50)
    runs: dict[str, list[Figures]] = {name: [] for name in servers}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "repository"
        user_sized_ranker(root / USER_MODEL / "1" / "model.onnx")
        for round_ in range(args.rounds):
            for name, server in servers.items():

                def show(rate: float, s: Summary, ok: bool, name: str = name,
                         round_: int = round_) -> None:  # fmt: skip
                    if not args.quiet:
                        print(f"  round {round_ + 1} {name:<12} {rate:6.0f}/s offered: goodput "
                              f"{s.ok_per_second:6.0f}/s, p99 {s.latency_ms['p99']:6.1f} ms"
                              f"{'' if ok else ' (misses)'}", flush=True)  # fmt: skip

                log = Path(scratch) / f"{name.replace(' ', '-')}.log"
                runs[name].append(measure(server, pythons[name], root, bodies, args, log, show))
    report(runs, args.p99_ms)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({n: [vars(f) | {"scores": f.scores[:3]} for f in r]
                                    for n, r in runs.items()}, indent=2) + "\n")  # fmt: skip
    return 0


def report(runs: dict[str, list[Figures]], p99_ms: float) -> None:
    mine = runs["this server"]
    print(f"user-sized ranker, 100 rows a request as V2 JSON, each server on one core; throughput "
          f"at p99 <= {p99_ms:g} ms, p50 and CPU per request at {LIGHT_RATE:g}/s (every round; "
          "ratios of the medians):")  # fmt: skip
    for name, figures in runs.items():
        difference = max(float(np.max(np.abs(np.subtract(f.scores, mine[0].scores))))
                         for f in figures)  # fmt: skip
        line = (f"  {name:<12} {', '.join(f'{f.throughput:,.0f}' for f in figures):>16} req/s   "
                f"p50 {', '.join(f'{f.light_p50_ms:.2f}' for f in figures)} ms   "
                f"CPU {', '.join(f'{f.light_cpu_us:,.0f}' for f in figures)} us/request   "
                f"scores within {difference:.1e}")  # fmt: skip
        if figures is not mine:
            ratio = (statistics.median(f.throughput for f in mine)
                     / max(1.0, statistics.median(f.throughput for f in figures)))  # fmt: skip
            line += f"   (this server: {ratio:.1f}x the throughput)"
        print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())

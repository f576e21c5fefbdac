"""`python -m bench.ledger`: where one request's CPU goes, by stage, at light load and at load, in
one process and through the engine, beside what the parts it cannot avoid cost alone.

Protocol: the server (`python -m app`, default settings but the repository) pinned to core 0, an
open-loop generator on core 1 (`bench.loadgen`, 256 connections; `bench.grpc_loadgen` for gRPC,
4 channels). Four workloads: `/v1/rank` with 100 candidates on the built-in model, and 100 rows on
the user-sized plain ranker as V2 JSON, as V2 binary tensors and as V2 gRPC (`workloads`). For
each: CPU per answered request (every process of the server, from /proc), p50 and p99 latency;
and, beside it, in the same run:
- the front end alone: `bench.apps frontend` / `frontend-v2` / `frontend-grpc` (FastAPI, or
  grpc.aio for gRPC, parsing the same body into the same arrays and answering a fixed result), at
  the same rates;
- the model alone: the server's own compute time per call at light load (Triton's statistics,
  `compute_infer`: one batch per request there, cold caches as a light-load request meets them),
  and, warm, the runtime's share of the ledger at load (the stricter figure for the goal there).
- for the user-sized ranker, the front end with the model inline: the same front end scoring the
  rows in its handler with the runtime the server chose (`bench.apps ... --model --backend`), no
  scheduler, batching, admission or metrics between them: the floor for any server that runs the
  model where it parses the request. Beside the goal's sum of the parts alone it shows what the
  two cost together in one process (each evicts the other's caches), and so what is the server's
  own.
The ledger: py-spy samples of every thread of the server (not the idle ones) during the measured
window, each assigned to the stage of its innermost frame that names one (`STAGES`), scaled to the
measured CPU per request. Sampling shares are approximate (a few hundred samples a run); the CPU
per request is the measurement. In the split both processes share core 0, and a process preempted
while runnable is sampled as busy: there the shares lean toward the process that writes to the
other. Without py-spy (`pip install py-spy`) the ledger is left out.

The goals it prints (issue 23): at load, CPU per request <= front end + model + 150 us; at light
load, p50 <= the front end's p50 + one model call + 0.2 ms and CPU within 1.5x of its figure at
load; the engine's own CPU per request <= 50 us.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import crossing, grpc_loadgen, loadgen, processes
from bench.multi_model import user_binary_bodies
from config.settings import load_settings

# Stage -> substrings of a py-spy frame ("function (file:line)"); a sample belongs to the first
# stage found walking from its innermost frame outward.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("runtime", ("onnxruntime/", "openvino/", "Backend.run (")),
    (
        "metrics",
        ("prometheus_client/", "scheduler/metrics.py", "app/http/metrics.py", "HotRoutes.observer"),
    ),
    (
        "parse",
        ("v2_codec.py", "v2_schema.py", "pydantic/", "parse_body", "asked (", "orjson", "wire.py"),
    ),
    (
        "features and checks",
        ("dataplane/tensors.py", "dataplane/ranking.py", "ranking_spec.py", "feature_tables.py"),
    ),
    ("scheduler", ("scheduler/",)),
    ("hand-off to the runtime thread", ("concurrent/futures", "threading.py")),
    ("data plane", ("app/dataplane/", "app/workers/")),
    ("hot routes", ("app/http/hot.py", "app/http/v1.py", "app/http/v2.py")),
    ("gRPC service", ("app/grpc/",)),
    ("FastAPI and Starlette", ("fastapi/", "starlette/")),
    ("HTTP protocol", ("httptools_impl", "app/http/protocol.py", "uvicorn/")),
    ("event loop and sockets (native)", ("Runner.run (",)),
    ("asyncio (Python)", ("asyncio/",)),
)


INLINE = "front end + model inline"


def find_py_spy() -> str | None:
    """py-spy on the PATH or beside this interpreter (the dev extras install it there)."""
    return shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))


def start_profile(spy: str, pid: int, seconds: int, output: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling `pid` and its children for `seconds` without pausing them, 250 times a
    second; raw (collapsed) stacks into `output`, for `shares`."""
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--subprocesses", "--nonblocking", "--rate", "250",
         "--duration", str(seconds), "--format", "raw", "--output", str(output)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def stage_of(frames: Sequence[str]) -> str:
    """The stage of a sample: its stack, outermost frame first."""
    for frame in reversed(frames):
        for stage, markers in STAGES:
            if any(marker in frame for marker in markers):
                return stage
    return "other"


def role_of(process_frame: str) -> str:
    """py-spy's process frame (`process PID:"command line"`) as the server's role."""
    words = process_frame.split()
    return words[words.index("--role") + 1].strip('"') if "--role" in words else "server"


def shares(raw: str) -> dict[tuple[str, str], float]:
    """py-spy's raw (collapsed) output as the share of samples by (role, stage)."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        # A child's process frame follows its parent's: the innermost one is the sample's. A
        # sample with none (py-spy writes some) is the sampled process's own.
        last = max((i for i, f in enumerate(frames) if f.startswith("process ")), default=-1)
        role = role_of(frames[last]) if last >= 0 else "server"
        counts[role, stage_of(frames[last + 1 :])] += int(count)
    total = sum(counts.values()) or 1
    return {key: n / total for key, n in counts.items()}


@dataclass
class Run:
    cpu_us: dict[str, float]  # by role
    p50_ms: float
    p99_ms: float
    answered: int
    model_us: float = 0.0  # compute time per request, from the server's statistics
    backend: str = ""  # the runtime the server chose for the model's first device
    stages: dict[tuple[str, str], float] = field(default_factory=dict)  # share by (role, stage)

    @property
    def total_us(self) -> float:
        return sum(self.cpu_us.values())


def model_stats(url: str, model: str) -> tuple[int, int]:
    with urllib.request.urlopen(f"{url}/v2/models/{model}/stats", timeout=10) as answer:
        stats = json.load(answer)["model_stats"][0]["inference_stats"]["compute_infer"]
    return int(stats["count"]), int(stats["ns"])


def served_backend(url: str, model: str) -> str:
    """The runtime the server runs the model's first device on (its config's instance group)."""
    with urllib.request.urlopen(f"{url}/v2/models/{model}/config", timeout=10) as answer:
        return str(json.load(answer)["instance_group"][0]["backend"])


@dataclass(frozen=True)
class Workload:
    label: str
    root: Path  # the model repository
    path: str
    bodies: list[str]
    front: str  # the `bench.apps` front end that parses the same bodies
    headers: list[dict[str, str]] = field(default_factory=list)  # per body
    encoding: str = "utf-8"  # of the bodies (latin-1: binary)
    grpc: bool = False  # the bodies (V2 JSON) sent as gRPC ModelInfer calls

    @property
    def model(self) -> str | None:
        return None if self.path == "/v1/rank" else self.path.split("/")[3]

    @property
    def model_file(self) -> Path | None:
        """The plain model's file, which the front end can score inline (None: the built-in)."""
        return None if self.model is None else self.root / self.model / "1" / "model.onnx"


def workloads(builtin: Path, model: str, scratch: Path) -> list[Workload]:
    """`bench.crossing`'s two, and the user-sized ranker's rows as V2 binary tensors and as V2
    gRPC calls (raw contents)."""
    (rank, (root, bodies, path)), (v2, (user_root, user, user_path)) = crossing.workloads(
        builtin, model, scratch / "user"
    ).items()
    binary, headers = user_binary_bodies(50)
    return [
        Workload(rank, root, path, bodies, "frontend"),
        Workload(v2, user_root, user_path, user, "frontend-v2"),
        Workload(v2.replace("JSON", "binary"), user_root, user_path, binary, "frontend-v2",
                 headers, "latin-1"),
        Workload(v2.replace("JSON", "gRPC"), user_root, user_path, user, "frontend-grpc",
                 grpc=True),
    ]  # fmt: skip


def measure(command: list[str], env: dict[str, str], offered: Workload, rate: float,
            seconds: float, log: Path, model: str | None, spy_path: str | None,
            cwd: Path = processes.ROOT) -> Run:  # fmt: skip
    port = target = processes.free_port()
    command = [*command, "--port", str(port)]
    if offered.grpc:  # the server's [grpc] port, or the gRPC front end's
        target = processes.free_port()
        env = {**env, "RECSYS_GRPC__PORT": str(target)}
        command += ["--grpc-port", str(target)] if "bench.apps" in command else []
    with processes.running(command, port, env, log, {0}, cwd) as (proc, url):

        def offer(rate: float, seconds: float) -> loadgen.LoadResult:
            spec = loadgen.LoadSpec("127.0.0.1", target, offered.bodies, offered.path, rate,
                                    seconds, connections=256, headers=offered.headers,
                                    cpu=loadgen.GENERATOR_CPU,
                                    body_encoding=offered.encoding)  # fmt: skip
            return (grpc_loadgen.run if offered.grpc else loadgen.run)(spec)

        offer(min(rate, 100), 2)
        backend = served_backend(url, model) if model else ""
        counted = model_stats(url, model) if model else (0, 0)
        spy = None
        samples = log.with_suffix(".samples")
        if spy_path is not None:
            spy = start_profile(spy_path, proc.pid, max(1, int(seconds) - 1), samples)
        before = crossing.process_cpu(proc.pid)
        result = offer(rate, seconds)
        after = crossing.process_cpu(proc.pid)
        if spy is not None:
            spy.wait(timeout=60)
        counted_after = model_stats(url, model) if model else (0, 0)
    latencies = sorted(t for t, s in zip(result.latencies, result.statuses, strict=True)
                       if s == 200)  # fmt: skip
    answered = max(1, len(latencies))
    requests = counted_after[0] - counted[0]
    return Run(
        cpu_us={role: 1e6 * (after[role] - before.get(role, 0.0)) / answered for role in after},
        p50_ms=1e3 * latencies[len(latencies) // 2] if latencies else float("nan"),
        p99_ms=1e3 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else float("nan"),
        answered=len(latencies),
        model_us=(counted_after[1] - counted[1]) / 1e3 / requests if requests else 0.0,
        backend=backend,
        stages=shares(samples.read_text()) if spy is not None and samples.exists() else {},
    )


def show(label: str, run: Run, quiet: bool) -> None:
    roles = ", ".join(f"{k} {v:.0f}" for k, v in sorted(run.cpu_us.items()))
    print(f"  {label:<46} CPU {run.total_us:5.0f} us/request ({roles}); p50 {run.p50_ms:.2f} ms, "
          f"p99 {run.p99_ms:.2f} ms; {run.answered} answered", flush=True)  # fmt: skip
    if quiet or not run.stages:
        return
    for (role, stage), share in sorted(run.stages.items(), key=lambda kv: -kv[1]):
        if share >= 0.005:
            cost = share * run.total_us
            print(f"      {role:<7} {stage:<34} {100 * share:4.0f}%  {cost:5.0f} us")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ledger",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--light", type=float, default=20.0, help="light load, requests/s")
    parser.add_argument("--load", type=float, default=600.0, help="load, requests/s")
    parser.add_argument("--seconds", type=float, default=8.0, help="per measured run")
    parser.add_argument("--repository", type=Path, help="the built model (default: settings)")
    parser.add_argument(
        "--tree",
        type=Path,
        default=processes.ROOT,
        help="serve the server from this checkout (e.g. a worktree of an earlier "
        "revision, for the ledger before a change); default: this one",
    )
    parser.add_argument("--only", default="", help="the workloads whose label contains this")
    parser.add_argument("--no-profile", action="store_true", help="leave the ledger out")
    parser.add_argument("-q", "--quiet", action="store_true", help="figures only, no ledger")
    args = parser.parse_args(argv)
    settings = load_settings()
    builtin = (args.repository or settings.model.repository).resolve()
    spy = find_py_spy()
    profile = not args.no_profile and spy is not None
    if not args.no_profile and not profile:
        print("py-spy is not installed: no ledger (pip install py-spy)", file=sys.stderr)
    rates = {"light": args.light, "load": args.load}
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "server.log"
        for offered in workloads(builtin, settings.model.name, Path(scratch)):
            if args.only not in offered.label:
                continue
            model = offered.model or settings.model.name
            env = {
                **os.environ,
                **processes.AS_DROPPED_IN,
                "RECSYS_MODEL__REPOSITORY": str(offered.root),
            }
            print(f"{offered.label} (server pinned to core 0; {args.seconds:g} s a run)")
            front = [sys.executable, "-m", "bench.apps", offered.front, "--repository",
                     str(offered.root)]  # fmt: skip
            server = [sys.executable, "-m", "app"]
            runs: dict[tuple[str, str], Run] = {}
            for when, rate in rates.items():
                runs["front end alone", when] = measure(front, env, offered, rate, args.seconds,
                                                        log, None, None)  # fmt: skip
                show(f"{when} {rate:g}/s, front end alone", runs["front end alone", when], True)
                for setup, overrides in crossing.SETUPS.items():
                    run = measure(server, {**env, **overrides}, offered, rate, args.seconds,
                                  log, model, spy if profile else None, args.tree)  # fmt: skip
                    runs[setup, when] = run
                    show(f"{when} {rate:g}/s, {setup}", run, args.quiet)
                if offered.model_file is not None:
                    inline = [*front, "--model", str(offered.model_file),
                              "--backend", runs["one process", when].backend]  # fmt: skip
                    runs[INLINE, when] = measure(inline, env, offered, rate, args.seconds, log,
                                                 None, None)  # fmt: skip
                    show(f"{when} {rate:g}/s, {INLINE}", runs[INLINE, when], True)
            verdicts(runs)
    return 0


def stage_us(run: Run, stage: str) -> float:
    """A stage's CPU per request in the ledger of `run`, every role together."""
    return sum(share for (_, name), share in run.stages.items() if name == stage) * run.total_us


def verdicts(runs: dict[tuple[str, str], Run]) -> None:
    """The goals, against the model alone twice: one call at light load (cold caches, as a
    light-load request meets it) and, at load, its share of the ledger where sampled, else the
    server's compute time per request at load (warm: the stricter figure for the goal there)."""
    cold = statistics.median(
        runs[setup, "light"].model_us for setup in crossing.SETUPS if runs[setup, "light"].model_us
    )
    at_load = runs["one process", "load"]
    sampled = bool(at_load.stages)
    warm = stage_us(at_load, "runtime") if sampled else at_load.model_us
    model = min(cold, warm) if warm else cold
    front_load, front_light = runs["front end alone", "load"], runs["front end alone", "light"]
    inline_backend = at_load.backend  # the inline front end's runtime
    where = "in the ledger" if sampled else "of the server's compute time"
    print(f"  model alone: {cold:.0f} us a call at light load (the server's compute time)"
          + (f"; {warm:.0f} us per request {where} at load" if warm else ""))  # fmt: skip
    for setup in crossing.SETUPS:
        load, light = runs[setup, "load"], runs[setup, "light"]
        over = load.total_us - front_load.total_us - model
        late = light.p50_ms - front_light.p50_ms - cold / 1e3
        ratio = light.total_us / load.total_us
        front_ratio = front_light.total_us / front_load.total_us
        print(f"  {setup}: at load {over:+.0f} us of CPU beyond front end + model (goal <= 150); "
              f"at light load p50 {late:+.2f} ms beyond front end + model (goal <= 0.20), CPU "
              f"{ratio:.2f}x its figure at load (goal <= 1.5; the front end alone's "
              f"{front_ratio:.2f}x)")  # fmt: skip
        inline_load, inline_light = runs.get((INLINE, "load")), runs.get((INLINE, "light"))
        if inline_load is not None and inline_light is not None:
            print(f"    beyond the front end with the model inline (on {inline_backend}): at load "
                  f"{load.total_us - inline_load.total_us:+.0f} us of CPU, at light load p50 "
                  f"{light.p50_ms - inline_light.p50_ms:+.2f} ms")  # fmt: skip
        engine = load.cpu_us.get("engine")
        if engine is not None:
            print(
                f"    the engine's own CPU per request at load: {engine:.0f} us (goal <= 50): "
                f"one engine caps the server at about {1e6 / engine:,.0f} requests/s"
            )
    print(flush=True)


if __name__ == "__main__":
    sys.exit(main())

"""`python -m bench.engine`: the engine process alone, fed over its socket by `--links` worker
links the way that many HTTP workers feed it, at rising rates: the engine's own CPU per request,
the requests/s one engine could take at that cost, and latency (issue 23's goal 3).

Why apart from `bench.ledger`: there the engine shares one core with one HTTP worker whose
capacity caps the rate (about 2,000/s on this VM), and requests arrive one per turn of the
engine's loop, so the engine's per-message work (a wake-up, a read, a write) is paid per request.
Many workers on many cores send several requests a turn; this bench does that from one process
on a core of its own: the real `app.workers.link.EngineLink` (each link its own connection and
slots of shared memory, the frames a worker sends), an open-loop schedule spread over the links.

Protocol: the engine (`python -m app --role engine`, default settings, its settings resolved as
the supervisor resolves them for `--links` workers) pinned to core 0, the driver on core 1; the
user-sized plain ranker (`bench.plain_models.user_sized_ranker`, `--rows` rows a request, random
valid ids), or `--hidden` for another tower. Per rate, after 2 s of warm-up: the engine's CPU
(/proc, every thread) over the answered requests, the driver's own CPU per request (it must not
be the limit), p50/p99 from submit to answer, and with `--profile` (py-spy, warm-up included)
the engine's CPU by stage (`bench.ledger.STAGES`) and its own work without the model's
arithmetic ("runtime"), which goal 3 bounds at 50 us a request. Beside them, the model alone:
ONNX Runtime on one thread scoring the same rows, one request a call and eight.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np

from bench import crossing, ledger, processes
from bench.multi_model import USER_MODEL
from bench.plain_models import user_sized_ranker
from scheduler.batch import Scored

ENGINE_CPU, DRIVER_CPU = 0, 1
TIMEOUT_SECONDS = 1.0  # each request's deadline in the engine


@dataclass(frozen=True)
class DriveSpec:
    socket: str
    settings_json: str
    rate: float
    seconds: float
    rows: int
    warm_seconds: float = 2.0


@dataclass
class Driven:
    sent: int
    answered: int
    failed: dict[str, int]
    latencies: list[float]  # of the answered, seconds
    driver_cpu_seconds: float  # over the measured window
    window: tuple[float, float]  # monotonic, of the measured window (the engine's CPU is read then)


async def drive(spec: DriveSpec, edge: Callable[[str], None]) -> Driven:
    """Submit `spec.rate` requests a second over every link, open loop, for warm-up and then
    `spec.seconds`, calling `edge` with "start" and "stop" at the measured window's edges (once
    the warm-up's answers are in, and once the window's are)."""
    from app.workers.link import EngineLink
    from app.workers.supervisor import worker_settings
    from config.settings import Settings

    settings = Settings.model_validate_json(Path(spec.settings_json).read_text())
    workers = settings.server.workers
    links = [EngineLink(worker_settings(settings, workers), Path(spec.socket))
             for _ in range(workers)]  # fmt: skip
    await asyncio.wait_for(asyncio.gather(*(link.start() for link in links)), 60)
    rng = np.random.default_rng(0)
    inputs: list[dict[str, np.ndarray]] = [
        {"cat": rng.integers(0, 5000, (spec.rows, 8)).astype(np.int64),
         "dense": rng.random((spec.rows, 4), dtype=np.float32)}
        for _ in range(64)
    ]  # fmt: skip
    latencies: list[float] = []
    failed: collections.Counter[str] = collections.Counter()  # by error class

    def done(started: float, future: asyncio.Future[Scored]) -> None:
        error = future.exception()
        if error is not None:
            failed[type(error).__name__] += 1
        else:
            latencies.append(time.perf_counter() - started)

    async def offer(seconds: float) -> int:
        total = int(spec.rate * seconds)
        begin = time.perf_counter()
        in_flight: list[asyncio.Future[Scored]] = []
        for i in range(total):
            delay = begin + i / spec.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            started = time.perf_counter()
            try:
                future = links[i % workers].submit(USER_MODEL, 1, inputs[i % len(inputs)],
                                                   TIMEOUT_SECONDS, 1)  # fmt: skip
            except Exception as exc:  # refused at once (no free slot, the engine gone)
                failed[type(exc).__name__] += 1
                continue
            future.add_done_callback(partial(done, started))
            in_flight.append(future)
        if in_flight:
            await asyncio.wait(in_flight, timeout=TIMEOUT_SECONDS + 5)
        return total

    await offer(spec.warm_seconds)
    latencies.clear()
    failed.clear()
    edge("start")
    cpu_before, start = time.process_time(), time.monotonic()
    sent = await offer(spec.seconds)
    cpu = time.process_time() - cpu_before
    window = (start, time.monotonic())
    edge("stop")
    for link in links:
        await link.close()
    return Driven(sent, len(latencies), dict(failed), latencies, cpu, window)


def run_driver(spec: DriveSpec, engine_pid: int, tree: Path) -> tuple[Driven, float]:
    """`spec` in a fresh driver process on its own core; with the engine's CPU seconds over the
    measured window (read as the driver says the window starts and ends)."""
    # The result (every latency: ~0.5 MB) goes through a file, not the pipe the edges come
    # through: once in some 20 runs the parent read a result line cut at 128 KiB.
    result_file = Path(spec.socket).with_suffix(".result.json")
    result_file.unlink(missing_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.engine", "--drive", str(result_file)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tree,
    )  # fmt: skip
    os.sched_setaffinity(process.pid, {DRIVER_CPU})
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(json.dumps(asdict(spec)).encode())
    process.stdin.close()
    engine_cpu = 0.0
    for line in process.stdout:  # "start", "stop"
        word = line.decode().strip()
        if word in ("start", "stop"):
            used = crossing.process_cpu(engine_pid).get("engine", 0.0)
            engine_cpu = used - engine_cpu if word == "stop" else used
    errors = process.stderr.read() if process.stderr is not None else b""
    if process.wait(timeout=30) != 0 or not result_file.exists():
        raise RuntimeError(f"the driver failed: {errors.decode()[-2000:]}")
    driven = Driven(**json.loads(result_file.read_text()))
    result_file.unlink()
    return driven, engine_cpu


def driver_main(result_file: Path) -> int:
    import uvloop

    spec = DriveSpec(**json.loads(sys.stdin.read()))
    result = uvloop.run(drive(spec, lambda word: print(word, flush=True)))
    result_file.write_text(json.dumps(asdict(result)))
    return 0


def engine_settings(repository: Path, links: int, scratch: Path) -> Path:
    """The engine's settings as the supervisor writes them for `links` workers."""
    from config.settings import load_settings

    settings = load_settings(model={"repository": str(repository)},
                             self_acceleration={"enabled": False})  # fmt: skip
    resolved = settings.server.model_copy(update={"workers": links, "engine": "process"})
    path = scratch / "engine.json"
    path.write_text(settings.model_copy(update={"server": resolved}).model_dump_json())
    return path


def model_alone_us(path: Path, rows: int, batch_requests: int) -> float:
    """ONNX Runtime alone, one thread, on `batch_requests` requests of `rows` rows in one call:
    microseconds per request (warm, median of 200 calls)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    n = rows * batch_requests
    feed = {"cat": rng.integers(0, 5000, (n, 8)).astype(np.int64),
            "dense": rng.random((n, 4), dtype=np.float32)}  # fmt: skip
    times = []
    for _ in range(220):
        started = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - started)
    return 1e6 * float(np.median(times[20:])) / batch_requests


def start_engine(settings_json: Path, socket_path: Path, log: Path, tree: Path,
                 ) -> subprocess.Popen[bytes]:  # fmt: skip
    with log.open("w") as output:
        engine = subprocess.Popen(
            [sys.executable, "-m", "app", "--engine-socket", str(socket_path), "--role", "engine",
             "--settings-json", str(settings_json)],
            cwd=tree, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    os.sched_setaffinity(engine.pid, {ENGINE_CPU})
    deadline = time.monotonic() + 120
    while not socket_path.exists():
        if engine.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the engine did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)
    return engine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.engine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--drive", type=Path, help=argparse.SUPPRESS)  # the result's file
    parser.add_argument("--links", type=int, default=16, help="worker links (default 16)")
    parser.add_argument("--rates", default="600,1500,3000,5000,8000",
                        help="requests/s, comma-separated")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=6.0, help="per measured run")
    parser.add_argument("--rows", type=int, default=100, help="rows a request")
    parser.add_argument("--hidden", default="256,128", help="the ranker's tower widths")
    parser.add_argument("--p99-ms", type=float, default=50.0, help="the latency target")
    parser.add_argument("--profile", action="store_true", help="py-spy the engine: its stages")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    parser.add_argument(
        "--tree",
        type=Path,
        default=processes.ROOT,
        help="run the engine and the links from this checkout (the engine before a change; "
        "copy this file into it); default: this one",
    )
    parser.add_argument("--samples", type=Path, help="keep py-spy's raw samples in this folder")
    args = parser.parse_args(argv)
    if args.drive:
        return driver_main(args.drive)
    spy = ledger.find_py_spy() if args.profile else None
    if args.profile and spy is None:
        print("py-spy is not installed: no stages (pip install py-spy)", file=sys.stderr)
    hidden = tuple(int(w) for w in args.hidden.split(","))
    figures: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        model = user_sized_ranker(scratch / "repository" / USER_MODEL / "1" / "model.onnx",
                                  hidden=hidden)  # fmt: skip
        alone = model_alone_us(model, args.rows, 1)
        print(f"model alone (ONNX Runtime, 1 thread): {alone:.0f} us per request of {args.rows} "
              f"rows one at a time, {model_alone_us(model, args.rows, 8):.0f} us in batches of 8 "
              f"requests", flush=True)  # fmt: skip
        settings_json = engine_settings(scratch / "repository", args.links, scratch)
        socket_path = scratch / "engine.sock"
        log = scratch / "engine.log"
        engine = start_engine(settings_json, socket_path, log, args.tree)
        try:
            print(f"engine pinned to core {ENGINE_CPU}; {args.links} worker links from a driver "
                  f"on core {DRIVER_CPU}; {args.seconds:g} s a rate", flush=True)  # fmt: skip
            for rate in (float(r) for r in args.rates.split(",")):
                spec = DriveSpec(str(socket_path), str(settings_json), rate, args.seconds,
                                 args.rows)  # fmt: skip
                samples = (args.samples or scratch) / f"engine-{rate:g}.samples"
                profiler = None
                if spy is not None:
                    seconds = int(args.seconds + spec.warm_seconds)
                    profiler = ledger.start_profile(spy, engine.pid, seconds, samples)
                driven, engine_cpu = run_driver(spec, engine.pid, args.tree)
                if profiler is not None:
                    profiler.wait(timeout=60)
                figures.append(report(rate, driven, engine_cpu, args.p99_ms, samples))
        finally:
            processes.stop(engine)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))
    return 0


def report(rate: float, driven: Driven, engine_cpu: float, p99_target_ms: float,
           samples: Path) -> dict[str, object]:  # fmt: skip
    answered = max(1, driven.answered)
    latencies = sorted(driven.latencies) or [float("nan")]
    p50 = 1e3 * latencies[len(latencies) // 2]
    p99 = 1e3 * latencies[int(0.99 * (len(latencies) - 1))]
    engine_us = 1e6 * engine_cpu / answered
    seconds = driven.window[1] - driven.window[0]
    busy = engine_cpu / seconds if seconds > 0 else float("nan")
    within = p99 <= p99_target_ms and not driven.failed
    failed = ", ".join(f"{k} {v}" for k, v in driven.failed.items()) or "none"
    print(f"  {rate:6.0f}/s offered: engine {engine_us:4.0f} us of CPU per request (core "
          f"{100 * busy:3.0f}% busy; one engine's cap at that cost {1e6 / engine_us:6,.0f}/s); "
          f"driver {1e6 * driven.driver_cpu_seconds / answered:3.0f} us/request; p50 {p50:6.2f} "
          f"ms, p99 {p99:7.2f} ms; answered {driven.answered} of {driven.sent}, failed {failed}"
          f"{'' if within else ' (past the target)'}", flush=True)  # fmt: skip
    stages = ledger.shares(samples.read_text()) if samples.exists() else {}
    runtime = sum(share for (_, stage), share in stages.items() if stage == "runtime")
    if stages:
        own = (1 - runtime) * engine_us
        print(f"      the engine's own work, the model's arithmetic aside: {own:.0f} us a request "
              f"(goal <= 50)")  # fmt: skip
    for (_, stage), share in sorted(stages.items(), key=lambda kv: -kv[1]):
        if share >= 0.01:
            print(f"      {stage:<34} {100 * share:4.0f}%  {share * engine_us:5.0f} us")
    return {"rate": rate, "engine_us": engine_us, "engine_busy": busy, "p50_ms": p50,
            "p99_ms": p99, "answered": driven.answered, "sent": driven.sent,
            "failed": driven.failed, "within_target": within,
            "driver_us": 1e6 * driven.driver_cpu_seconds / answered,
            "stages": {stage: share for (_, stage), share in stages.items()}}  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())

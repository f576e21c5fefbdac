"""`python -m app` with `[server] workers` > 1: one engine process (`app.workers.engine`: the
schedulers, devices and sessions), N HTTP worker processes accepting on one listening socket this
process binds and hands them, and this process watching them.

- A worker that exits is restarted on the same socket (the kernel hands new connections to the
  others meanwhile); its connections close with it, so no request it held is left hanging.
- An engine that exits after start-up is restarted; meanwhile every worker is not ready and
  answers 503 saying so (`app.workers.link`).
- SIGTERM: the workers drain as one process would (readiness false, new requests refused, what
  they accepted answered), then the engine stops; exit 0. A second signal, or SIGINT: stop now.
- One `/metrics` for the server: every process records into prometheus_client's multiprocess
  files (PROMETHEUS_MULTIPROC_DIR, set here for the children), summed at each scrape.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from prometheus_client import CollectorRegistry

from config.settings import Settings

log = logging.getLogger(__name__)
MAX_AUTO_WORKERS = 16
QUICK_EXIT_SECONDS = 5.0  # a worker that exits this soon after its start is failing to start
MAX_QUICK_EXITS = 5
STOP_GRACE_SECONDS = 5.0
WATCH_SECONDS = 1.0  # at most between looks at the children; an exit or a signal wakes it at once


def worker_count(setting: int, cores: int) -> int:
    """`[server] workers`, 0 meaning the cores this process may use (capped)."""
    return setting or max(1, min(cores, MAX_AUTO_WORKERS))


def worker_settings(settings: Settings, workers: int) -> Settings:
    """A worker's settings: its share of the server's in-flight limit, the worker count resolved
    (the runtime threads it reports are the engine's: `app.dataplane.serving.runtime_cores`)."""
    admission = settings.admission
    share = max(1, -(-admission.max_in_flight_requests // workers))
    return settings.model_copy(update={
        "admission": admission.model_copy(update={"max_in_flight_requests": share}),
        "server": settings.server.model_copy(update={"workers": workers}),
    })  # fmt: skip


def listening_socket(host: str, port: int) -> socket.socket:
    """Bound, not listening: the first worker to start serving listens (until then, a
    connection is refused rather than left waiting on a server that is not up)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        where = f"{host}:{port}"
        raise OSError(f"[server] host/port: cannot listen on {where} ({exc.strerror})") from None
    sock.set_inheritable(True)
    return sock


PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child, before it runs: SIGTERM once the supervisor is gone, even killed with
    SIGKILL, so no engine or worker outlives it (it drains, then exits)."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    role: str
    command: list[str]
    pass_fds: tuple[int, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    quick_exits: int = 0
    pids: list[int] = field(default_factory=list)

    def start(self, env: dict[str, str]) -> None:
        # preexec_fn is unsafe in a process with threads; the supervisor starts none.
        self.process = subprocess.Popen(
            self.command, env=env, pass_fds=self.pass_fds,
            preexec_fn=die_with_parent,  # noqa: PLW1509
        )  # fmt: skip
        self.started_at = time.monotonic()
        self.pids.append(self.process.pid)

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def wait(self, seconds: float) -> int:
        assert self.process is not None
        try:
            return self.process.wait(seconds)
        except subprocess.TimeoutExpired:
            log.error("%s (pid %d) did not stop in %.0f s: killed", self.role, self.process.pid,
                      seconds)  # fmt: skip
            self.process.kill()
            return self.process.wait()


class ChildExits:
    """Wakes the supervisor when a child exits or a signal arrives (through the signal module's
    wake-up descriptor), instead of a poll ten times a second, which cost an idle server ~1.7 ms
    of CPU a second."""

    def __enter__(self) -> ChildExits:
        self._read, self._write = os.pipe()
        for fd in (self._read, self._write):
            os.set_blocking(fd, False)
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        # SIGCHLD's default is to be ignored, which writes nothing to the wake-up descriptor.
        self._previous_handler = signal.signal(signal.SIGCHLD, lambda *_: None)
        return self

    def wait(self, seconds: float) -> None:
        """Until a child exits, a signal arrives or `seconds` pass."""
        select.select([self._read], [], [], seconds)
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 512):
                pass

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGCHLD, self._previous_handler)
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._read)
        os.close(self._write)


class Supervisor:
    def __init__(self, settings: Settings, workers: int, own_engines: bool = False) -> None:
        self.settings = settings
        self.workers = workers
        self.own_engines = own_engines  # each worker a whole server: no engine process
        self.workdir = Path(tempfile.mkdtemp(prefix="recsys-serve-"))
        self.metrics_dir = self.workdir / "metrics"
        self.metrics_dir.mkdir()
        self.socket_path = self.workdir / "engine.sock"
        self.stopping = 0  # 1: drain (SIGTERM); 2: stop now
        self.engine_up = False  # the engine's socket appeared since its last start
        # The children's settings are the JSON this process writes; RECSYS_* variables would
        # apply again over it (a worker's share of the in-flight limit back to the whole).
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
        if not own_engines:  # one /metrics for the server, from every process's files
            self.env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        self.children: list[Child] = []

    def _signal(self, sig: int, frame: FrameType | None) -> None:
        if self.stopping or sig != signal.SIGTERM:  # a second signal, or SIGINT: stop now
            self.stopping = 2
            for child in self.children:
                child.signal(signal.SIGKILL)
        else:
            self.stopping = 1

    def run(self) -> int:
        try:
            return self._run()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _run(self) -> int:
        server = self.settings.server
        listener = listening_socket(server.host, server.port)
        engine_json = self.workdir / "engine.json"
        resolved = self.settings.server.model_copy(update={"workers": self.workers})
        engine_json.write_text(self.settings.model_copy(update={"server": resolved})
                               .model_dump_json())  # fmt: skip
        worker_json = self.workdir / "worker.json"
        worker_json.write_text(worker_settings(self.settings, self.workers).model_dump_json())
        base = [sys.executable, "-m", "app", "--engine-socket", str(self.socket_path)]
        engine = Child("engine", [*base, "--role", "engine", "--settings-json", str(engine_json)])
        fd = listener.fileno()
        role = "server" if self.own_engines else "worker"
        serve = [*base, "--role", role, "--settings-json", str(worker_json)]
        workers = [
            Child(f"worker {i}", [*serve, "--listen-fd", str(fd)], pass_fds=(fd,))
            for i in range(self.workers)
        ]
        self.children = [engine, *workers]
        signal.signal(signal.SIGTERM, self._signal)
        signal.signal(signal.SIGINT, self._signal)
        engines = "each its own engine" if self.own_engines else "one engine process"
        log.info("supervisor: %d HTTP workers, %s, on %s:%d", self.workers, engines, server.host,
                 listener.getsockname()[1])  # fmt: skip
        if not self.own_engines:
            engine.start(self.env)
        for worker in workers:
            worker.start(self.env)
        try:
            status = self.watch(engine, workers)
            return self.stop(engine, workers, listener) if status == 0 else status
        finally:
            for child in (engine, *workers):
                child.signal(signal.SIGKILL)
            listener.close()

    def watch(self, engine: Child, workers: list[Child]) -> int:
        """Restart what exits until a signal; nonzero: the server cannot start."""
        with ChildExits() as exits:
            while not self.stopping:
                exits.wait(WATCH_SECONDS)
                code = self._restart_exited(engine, workers)
                if code:
                    return code
        return 0

    def _restart_exited(self, engine: Child, workers: list[Child]) -> int:
        """Restart whatever exited; nonzero: the server cannot start."""
        self.engine_up = self.engine_up or self.socket_path.exists()
        code = None if self.own_engines else engine.exited()
        if code is not None:
            if not self.engine_up:
                log.error("the engine exited with status %d before it was ready", code)
                return 1
            log.error("the engine (pid %d) exited with status %d: restarting it",
                      engine.pids[-1], code)  # fmt: skip
            self.forget(engine)
            self.engine_up = False
            engine.start(self.env)
        for worker in workers:
            code = worker.exited()
            if code is None:
                continue
            quick = time.monotonic() - worker.started_at < QUICK_EXIT_SECONDS
            worker.quick_exits = worker.quick_exits + 1 if quick else 0
            if worker.quick_exits >= MAX_QUICK_EXITS:
                log.error("%s exited %d times in a row at start-up (status %d)",
                          worker.role, worker.quick_exits, code)  # fmt: skip
                return 1
            log.error("%s (pid %d) exited with status %d: restarting it", worker.role,
                      worker.pids[-1], code)  # fmt: skip
            self.forget(worker)
            worker.start(self.env)
        return 0

    def forget(self, child: Child) -> None:
        """A dead process's live gauges leave /metrics (its counters stay in the totals)."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(child.pids[-1], str(self.metrics_dir))  # type: ignore[no-untyped-call]

    def stop(self, engine: Child, workers: list[Child], listener: socket.socket) -> int:
        server = self.settings.server
        log.info("supervisor: draining %d workers, then the engine", len(workers))
        for worker in workers:
            worker.signal(signal.SIGTERM if self.stopping == 1 else signal.SIGKILL)
        listener.close()
        limit = server.drain_delay_seconds + server.graceful_shutdown_seconds + STOP_GRACE_SECONDS
        codes = [worker.wait(limit) for worker in workers]
        if not self.own_engines:
            engine.signal(signal.SIGTERM)
            codes.append(engine.wait(server.graceful_shutdown_seconds + STOP_GRACE_SECONDS))
        log.info("supervisor: stopped (exit statuses %s)", codes)
        return 0 if self.stopping == 1 and not any(codes) else 1


def server_wide() -> CollectorRegistry:
    """The metrics of every process of a server with workers (prometheus_client's multiprocess
    files, PROMETHEUS_MULTIPROC_DIR), summed at each scrape."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry

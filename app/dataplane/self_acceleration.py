"""Self-acceleration ([self_acceleration]): a plain ONNX model served with no acceleration record
is made faster on its own live traffic, with nothing for the user to run.

1. sampling: a share of live requests ([shadow] sample_fraction) is copied until
   `calibration_rows` input rows are held;
2. building: `python -m models.live_variants` (a child process at the lowest CPU priority, on
   `build_cores` cores, stopped past `build_cpu_seconds`) writes the variant kinds asked for into
   the version folder, calibrated on those rows, and times each single-threaded;
3. shadowing: each variant at least `min_speedup` times faster than the source shadows the live
   requests (`app.dataplane.shadow`: idle device time only, lowest priority) until `[shadow]
   min_requests` were compared and judged by `accelerate`'s no-label gate;
4. promoting: the record (`acceleration.json`, "gated on live traffic") is written with the
   variants that passed servable, and the model reloads: the server's usual reading of a record
   serves the fastest, and a restart serves it at once;
5. watching: while a promoted variant serves, the source scores `watch_fraction` of its requests
   beside it; when they drift apart past the gate the variant is demoted (the record says when
   and why) and the model reloads onto the next fastest, else the source.

Where one version folder is served by several processes (workers each a whole server), the first
to hold enough sampled rows takes the folder's lock and builds and shadows; after promotion every
process watches its own requests and the first to see drift rewrites the record (under the lock);
each reloads when another rewrites the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from app.dataplane.devices import DEVICE_KIND_OF_BACKEND, RUNTIME_OF_BACKEND, plan_devices
from app.dataplane.live_record import (
    SOURCE,
    Built,
    demoted,
    live_record,
    relative_latency,
    worth_shadowing,
)
from app.dataplane.serving import Serving
from app.dataplane.shadow import Shadow, ShadowMetrics, start_candidate
from config.settings import Settings
from models.artifacts.acceleration_record import (
    RECORD,
    AccelerationRecord,
    LiveEvidence,
    cpu_model,
    write_record,
)
from models.artifacts.repository import RepositoryError, file_ref
from models.artifacts.servable import PLAIN_VARIANT, VariantFile
from scheduler.batch import Inputs, Scored
from scheduler.scheduler import Scheduler
from scheduler.settings import DeviceSettings

log = logging.getLogger(__name__)
LOCK = ".self-acceleration.lock"
STAGING = ".self-acceleration"  # variants being shadowed: hidden, so no reload sees them
Verdicts = dict[str, tuple[str, str, int]]  # variant -> (state, reason, requests compared)
POLL_SECONDS = 1.0  # how often verdicts, the lock and the record are looked at


def timed_batch_rows(request_rows: list[int], max_rows: int) -> list[int]:
    """The batch sizes variants are timed at: the sampled requests' median rows (light load), the
    largest batch (a saturated device) and their geometric middle."""
    typical = min(sorted(request_rows)[len(request_rows) // 2], max_rows)
    return sorted({typical, round((typical * max_rows) ** 0.5), max_rows})


def with_weights(path: Path) -> list[Path]:
    """A model file and, for OpenVINO IR, its weights beside it."""
    return [path, *([path.with_suffix(".bin")] if path.suffix == ".xml" else [])]


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class SelfAccelerator:
    """One served version's self-acceleration (its state in `document()`); `reload` reloads
    the model from its folder (the registry's), `live` is the version's own scheduler."""

    def __init__(self, serving: Serving, live: Scheduler, settings: Settings, cores: int,
                 slots: Mapping[str, asyncio.Semaphore] | None, metrics: ShadowMetrics | None,
                 reload: Callable[[], Awaitable[None]]) -> None:  # fmt: skip
        self.serving, self.version, self.live = serving, serving.version, live
        # The record the version was opened with (not_self_accelerated: none, or one live
        # traffic gated): what it serves comes from it.
        self.record = serving.version.record
        self.settings, self.own = settings, settings.self_acceleration
        self._cores, self._slots, self._metrics, self._reload = cores, slots, metrics, reload
        self.state, self.reason = "starting", ""
        self.shadows: dict[str, Shadow] = {}
        self.judged: dict[str, dict[str, Any]] = {}  # closed shadows' last documents
        self.skipped: dict[str, str] = {}
        self.build_seconds: float | None = None
        self.build_cpu_seconds: float | None = None
        self._rows: list[Inputs] = []
        self._held_rows = 0
        self._request_rows: list[int] = []  # each sampled request's rows
        self._rows_full = asyncio.Event()
        self._sampler = random.Random(1)
        self._started_at = ""
        self._lock_file: IO[str] | None = None
        self._task: asyncio.Task[None] | None = None
        self._follower: asyncio.Task[None] | None = None
        self._seen: tuple[int, int] | None = None  # the record's (mtime, size) as last read
        self._writing = False
        self._reloading = False
        self._child: asyncio.subprocess.Process | None = None
        self._max_rows = live.batching.max_batch_rows

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"self-accelerate {self.version.model}")

    # -- the live path: one call per request, cheap unless sampled --

    def offer(self, inputs: Inputs, answer: asyncio.Future[Scored]) -> None:
        for shadow in self.shadows.values():
            shadow.offer(inputs, answer)
        sampling = self.state == "sampling" and not self._rows_full.is_set()
        if sampling and self._sampler.random() < self.settings.shadow.sample_fraction:
            self._rows.append({name: np.array(a, copy=True) for name, a in inputs.items()})
            rows = len(next(iter(inputs.values())))
            self._held_rows += rows
            self._request_rows.append(rows)
            self._started_at = self._started_at or now()
            if self._held_rows >= self.own.calibration_rows:
                self._rows_full.set()

    # -- the steps --

    async def _run(self) -> None:
        self._seen = await asyncio.to_thread(self._record_stamp)
        self._follower = asyncio.create_task(self._follow(), name="self-acceleration follower")
        try:
            if self.record is None:
                await self._accelerate()
            else:
                await self._watch(self.record)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # self-acceleration never takes serving down
            self._set("failed", repr(exc)[:500])
            log.exception("%s version %d: self-acceleration failed", self.version.model,
                          self.version.number)  # fmt: skip

    async def _follow(self) -> None:
        """Reload when another process serving this folder rewrites the record."""
        while True:
            await asyncio.sleep(POLL_SECONDS)
            stamp = await asyncio.to_thread(self._record_stamp)
            if stamp != self._seen and not self._writing:
                self._seen = stamp
                await self._reload_model("another process rewrote the record")
                return

    async def _write(self, record: AccelerationRecord) -> None:
        self._writing = True
        try:
            await asyncio.to_thread(write_record, self.version.path, record)
            self._seen = await asyncio.to_thread(self._record_stamp)
        finally:
            self._writing = False

    async def _lock(self, seconds: float) -> bool:
        """The folder's lock, waiting up to `seconds` for another process to release it."""
        deadline = time.monotonic() + seconds
        while not await asyncio.to_thread(self._try_lock):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(POLL_SECONDS / 10)
        return True

    def _try_lock(self) -> bool:
        handle = open(self.version.path / LOCK, "a")  # noqa: SIM115 (held until close)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._lock_file = handle
        return True

    def _record_stamp(self) -> tuple[int, int] | None:
        with contextlib.suppress(OSError):
            stat = (self.version.path / RECORD).stat()
            return stat.st_mtime_ns, stat.st_size
        return None

    async def _accelerate(self) -> None:
        self._set("sampling", f"copying {self.own.calibration_rows:,} input rows from "
                  f"{self.settings.shadow.sample_fraction:.1%} of live requests")  # fmt: skip
        await self._rows_full.wait()
        if not await self._lock(0):  # the first process to hold enough rows builds
            self._rows.clear()
            self._set("following", "another process builds and shadows this version's variants; "
                      "this one reloads when it writes the record")  # fmt: skip
            return
        rows = {name: np.concatenate([r[name] for r in self._rows]) for name in self._rows[0]}
        self._rows.clear()
        count = len(next(iter(rows.values())))
        self._set("building", f"{', '.join(self.own.kinds)} from {count:,} sampled rows, in a "
                  "child process at the lowest priority")  # fmt: skip
        built = await self._build(rows)
        served = self._served_configs()
        chosen = worth_shadowing(built, set(served), self._max_rows, self.own.min_speedup)
        source = next(b for b in built if b.name == PLAIN_VARIANT)
        shadowed = {variant.name for variant, _, _ in chosen}
        for variant in built:
            if variant.name not in shadowed | {PLAIN_VARIANT}:
                self.skipped[variant.name] = (
                    f"not {self.own.min_speedup}x faster than the source on a runtime served here "
                    f"({self._ratios(variant, source)})"
                )
        for variant, runtime, ratio in chosen:
            file = VariantFile(variant.name, self._where(variant.file), variant.format,  # type: ignore[arg-type]
                               variant.precision, variant.runtimes, variant.hint, "cpu")  # type: ignore[arg-type]  # fmt: skip
            self.shadows[variant.name] = await start_candidate(
                self.version, served[runtime], file, variant.name, self.live, self.settings,
                self._cores, self._slots, self._metrics,
            )  # fmt: skip
            log.info("%s version %d: shadowing %s (%.2fx the source's latency on %s)",
                     self.version.model, self.version.number, variant.name, ratio,
                     runtime)  # fmt: skip
        if chosen:
            self._set("shadowing", ", ".join(f"{v.name} ({r:.2f}x the source's latency on {rt})"
                                             for v, rt, r in chosen))  # fmt: skip
        verdicts = await self._verdicts()
        passed = {name for name, (state, _, _) in verdicts.items() if state == "passes"}
        gates = {**{name: f"not shadowed: {why}" for name, why in self.skipped.items()},
                 **{name: f"live traffic {state}: {reason}"
                    for name, (state, reason, _) in verdicts.items()}}  # fmt: skip
        record = await self._write_record(built, passed, gates, verdicts)
        served_now = sorted(set(record.default_variants.values()) - {PLAIN_VARIANT})
        log.info("%s version %d: self-acceleration recorded: %s", self.version.model,
                 self.version.number, "; ".join(f"{k}: {v}" for k, v in gates.items()))  # fmt: skip
        if served_now:
            self._set("promoting", f"{', '.join(served_now)} passed on live traffic; reloading")
            await self._reload_model("promoted")
            return
        for name in list(self.shadows):
            await self._retire_shadow(name)
        self._set("serving the source", "no variant both faster and agreeing on live traffic: "
                  + "; ".join(f"{k}: {v}" for k, v in gates.items()))  # fmt: skip

    async def _write_record(self, built: list[Built], passed: set[str], gates: dict[str, str],
                            verdicts: Verdicts) -> AccelerationRecord:  # fmt: skip
        """The record, with the passing variants' files moved into the version folder."""
        evidence = LiveEvidence(
            sample_fraction=self.settings.shadow.sample_fraction,
            min_requests=self.settings.shadow.min_requests, started_at=self._started_at,
            judged_at=now(), requests={name: n for name, (_, _, n) in verdicts.items()},
            build_seconds=self.build_seconds, build_cpu_seconds=self.build_cpu_seconds,
        )  # fmt: skip
        names = {b.file for b in built}
        refs = {name: file_ref(self._where(name).parent, name) for name in names}
        sizes = {name: sum(p.stat().st_size for p in with_weights(self._where(name)))
                 for name in names}  # fmt: skip
        keep = {b.file for b in built if b.name in passed and b.file != SOURCE}
        await asyncio.to_thread(self._move_in, keep)
        judged = max((rows for _, _, rows in verdicts.values()), default=0)
        record = live_record(
            built, gates, passed, evidence, cpu_model(),
            self.own.calibration_rows, judged, self._max_rows, refs, sizes,
        )  # fmt: skip
        await self._write(record)
        return record

    async def _build(self, rows: Inputs) -> list[Built]:
        started = time.monotonic()
        with tempfile.TemporaryDirectory() as scratch:
            rows_file = Path(scratch) / "rows.npz"
            await asyncio.to_thread(np.savez, rows_file, **rows)  # type: ignore[arg-type]
            sizes = timed_batch_rows(self._request_rows, self._max_rows)
            staging = self.version.path / STAGING
            await asyncio.to_thread(shutil.rmtree, staging, True)
            staging.mkdir()
            self._child = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "models.live_variants", str(self.version.path),
                str(rows_file), "--out", str(staging), "--kinds", ",".join(self.own.kinds),
                "--batch-rows", ",".join(map(str, sizes)),
                "--cores", str(self.own.build_cores),
                "--cpu-seconds", str(self.own.build_cpu_seconds),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await self._child.communicate()
            code, self._child = self._child.returncode, None
        self.build_seconds = time.monotonic() - started
        if code != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"building the variants failed (exit {code}): {' | '.join(tail)}")
        document = orjson.loads(out)
        self.skipped.update(document["skipped"])
        self.build_cpu_seconds = document["cpu_seconds"]
        log.info("%s version %d: built and timed %s in %.1f s (skipped: %s)", self.version.model,
                 self.version.number, ", ".join(v["name"] for v in document["variants"][1:]),
                 self.build_seconds, document["skipped"] or "none")  # fmt: skip
        return [Built.parse(entry) for entry in document["variants"]]

    async def _verdicts(self) -> Verdicts:
        """Each shadow's verdict, (state, reason, requests), once reached; a failed shadow is
        closed at once, the others run until all are judged."""
        verdicts: Verdicts = {}
        expected = len(self.shadows)
        while len(verdicts) < expected:
            await asyncio.sleep(POLL_SECONDS)
            for name, shadow in list(self.shadows.items()):
                state = shadow.verdict()
                if name in verdicts or state == "pending":
                    continue
                judged = list(shadow.verdicts.values())
                reason = "; ".join(v.reason for v in judged)
                verdicts[name] = (state, reason, min(v.requests for v in judged))
                if state == "fails":  # no use scoring it further
                    await self._retire_shadow(name)
                log.info("%s version %d: %s %s on live traffic: %s", self.version.model,
                         self.version.number, name, state, reason)  # fmt: skip
        return verdicts

    async def _watch(self, record: AccelerationRecord) -> None:
        """The source beside each promoted variant this version's devices run."""
        promoted = {v.name for v in self.serving.variants.values()} - {PLAIN_VARIANT}
        if not promoted:
            demotions = record.live.demoted if record.live else {}
            self._set("serving the source", "; ".join(f"{k} {v}" for k, v in demotions.items())
                      or f"no variant passed on live traffic ({record.created_at})")  # fmt: skip
            return
        watching = self.settings.model_copy(update={"shadow": self.settings.shadow.model_copy(
            update={"sample_fraction": self.own.watch_fraction})})  # fmt: skip
        served = self._served_configs()
        source = self.version.variants[PLAIN_VARIANT]
        runtime = next(r for r in source.runtimes if r in served)
        self.shadows[PLAIN_VARIANT] = await start_candidate(
            self.version, served[runtime], source, PLAIN_VARIANT, self.live, watching,
            self._cores, self._slots, self._metrics,
        )  # fmt: skip
        share = self.own.watch_fraction
        self._set("watching", f"serving {', '.join(sorted(promoted))} (gated on live traffic); "
                  f"the source scores {share:.1%} of requests beside it")  # fmt: skip
        shadow = self.shadows[PLAIN_VARIANT]
        while shadow.verdict() != "fails":
            await asyncio.sleep(POLL_SECONDS)
        reason = "; ".join(v.reason for v in shadow.verdicts.values() if v.state == "fails")
        # Every process watches its own requests; the first to see drift rewrites the record.
        if not await self._lock(30) or await asyncio.to_thread(self._record_stamp) != self._seen:
            await self._reload_model("another process rewrote the record")
            return
        rewritten = record
        for name in promoted:
            rewritten = demoted(rewritten, name, reason, now(), self._max_rows)
        await self._write(rewritten)
        self._set("demoting", f"{', '.join(sorted(promoted))} drifted from the source: {reason}")
        log.warning("%s version %d: demoting %s: drifted from the source: %s", self.version.model,
                    self.version.number, ", ".join(sorted(promoted)), reason)  # fmt: skip
        await self._reload_model("demoted")

    # -- helpers --

    async def _retire_shadow(self, name: str) -> None:
        shadow = self.shadows.pop(name)
        self.judged[name] = shadow.document()
        await shadow.close()

    async def _reload_model(self, why: str) -> None:
        if self._reloading:
            return
        self._reloading = True
        if self._lock_file is not None:  # for the accelerator of the version reloaded
            self._lock_file.close()
            self._lock_file = None
        log.info("%s: reloading (%s)", self.version.model, why)
        try:
            await self._reload()
        except (RepositoryError, ValueError) as exc:
            self._set("failed", f"reloading after it was {why}: {exc}")

    def _served_configs(self) -> dict[str, DeviceSettings]:
        """Runtime -> the first CPU device setting here that runs it."""
        configs: dict[str, DeviceSettings] = {}
        for config, _ in plan_devices(self.version, self.settings):
            if DEVICE_KIND_OF_BACKEND[config.backend] == "cpu":
                configs.setdefault(RUNTIME_OF_BACKEND[config.backend], config)
        return configs

    @staticmethod
    def _ratios(variant: Built, source: Built) -> str:
        return ", ".join(f"{relative_latency(variant, source, r, 1 << 30):.2f}x on {r}"
                         for r in variant.runtimes)  # fmt: skip

    def _where(self, file: str) -> Path:
        """A built file: the source in the version folder, a variant in the staging folder."""
        return self.version.path / (file if file == SOURCE else f"{STAGING}/{file}")

    def _move_in(self, files: set[str]) -> None:
        """The promoted variants' files into the version folder; the staging folder removed."""
        for name in files:
            for part in with_weights(self._where(name)):
                os.replace(part, self.version.path / part.name)
        shutil.rmtree(self.version.path / STAGING, ignore_errors=True)

    def _set(self, state: str, reason: str) -> None:
        if (state, reason) != (self.state, self.reason):
            log.info("%s version %d: self-acceleration %s: %s", self.version.model,
                     self.version.number, state, reason)  # fmt: skip
        self.state, self.reason = state, reason

    def document(self) -> dict[str, Any]:
        shadows = [shadow.document() for shadow in self.shadows.values()]
        shadows += self.judged.values()
        live = self.record.live if self.record else None
        return {
            **(shadows[0] if len(shadows) == 1 else {"candidate": None}),
            "self_acceleration": {
                "state": self.state,
                "reason": self.reason,
                "sampled_rows": self._held_rows,
                "build_seconds": self.build_seconds,
                "build_cpu_seconds": self.build_cpu_seconds,
                "skipped": self.skipped,
                "candidates": shadows,
                "live_evidence": live.model_dump() if live else None,  # the record's
            },
        }

    async def close(self) -> None:
        if self._child is not None and self._child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._child.kill()
        tasks = [t for t in (self._task, self._follower) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for shadow in self.shadows.values():
            await shadow.close()
        if self._lock_file is not None:
            self._lock_file.close()

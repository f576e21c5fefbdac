"""Shadow scoring: a candidate (another variant of the served version, `[shadow] candidates`, or
another version of the model, `[shadow] versions`) scores a sampled share of the version's live
requests off the critical path, and each is compared with the answer sent.

The live answer never waits for it. A sampled request's inputs are copied at submit time (a
worker's shared-memory slot is reused once it is answered); once the live answer is out, the
candidate is given the rows only while the live scheduler has nothing queued or running (waiting,
with back-off, up to `wait_ms`), at low priority, on a device that shares the live one's batch
slots; what cannot be scored in time is dropped and counted, never queued without bound.
Results: `recsys_shadow_requests_total{model,candidate,outcome}` and the document
`GET /v2/models/{name}/shadow` returns (`Shadow.document`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter

from app.dataplane.devices import RUNTIME_OF_BACKEND, create_device, plan_devices, warmup_inputs
from app.dataplane.shadow_compare import Tally, compare
from app.dataplane.shadow_gate import Gate, RecentRows, Verdict, judge
from app.settings import ShadowSettings
from config.settings import Settings
from models.artifacts.servable import ServableVersion, VariantFile
from scheduler.batch import Inputs, Scored
from scheduler.device import Device
from scheduler.errors import DeadlineExceeded, Overloaded
from scheduler.load import LoadReport
from scheduler.metrics import ModelMetrics
from scheduler.router import make_router
from scheduler.scheduler import HIGH, LOW, BatchingConfig, Scheduler
from scheduler.served import Served
from scheduler.settings import DeviceSettings

log = logging.getLogger(__name__)

OUTCOMES = ("compared", "busy", "shed", "failed")  # bounded label values
SHADOW_DEVICE_SUFFIX = ".shadow"  # a candidate's device: the live device's name and this


class ShadowMetrics:
    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.requests = PromCounter(
            f"{prefix}_shadow_requests", "Sampled live requests offered to a shadow candidate, by "
            "outcome: compared, busy (max_pending reached), shed (not scored within wait_ms), "
            "failed", ["model", "candidate", "outcome"], registry=registry,
        )  # fmt: skip


@dataclass
class Shadow:
    """`candidate` (its own scheduler and device) shadowing `live` (a version's scheduler, in
    this process); `variant`: how metrics and the document name the candidate."""

    model: str
    variant: str
    live: Scheduler
    candidate: Scheduler
    settings: ShadowSettings
    gate: Gate
    metrics: ShadowMetrics | None = None
    outcomes: Counter[str] = field(default_factory=Counter)
    tallies: dict[str, Tally] = field(default_factory=dict)
    pools: dict[str, RecentRows] = field(default_factory=dict)
    verdicts: dict[str, Verdict] = field(default_factory=dict)  # per output, the latest
    _judging: asyncio.Task[None] | None = None
    # Sampled at random, not every n-th: a client cycling through a fixed list of requests would
    # alias with a period and show the candidate the same few requests over and over.
    _sampler: random.Random = field(default_factory=lambda: random.Random(0))
    _pending: set[asyncio.Task[None]] = field(default_factory=set)

    def offer(self, inputs: Inputs, answer: asyncio.Future[Scored]) -> None:
        """A live request just submitted: sampled, it is scored by the candidate once answered."""
        if self._sampler.random() >= self.settings.sample_fraction:
            return
        if len(self._pending) >= self.settings.max_pending:
            self._count("busy")
            return
        copied = {name: np.array(array, copy=True) for name, array in inputs.items()}
        task = asyncio.ensure_future(self._score(copied, answer))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _score(self, inputs: Inputs, answer: asyncio.Future[Scored]) -> None:
        try:
            sent = await asyncio.shield(answer)
        except BaseException:  # the live request failed or was cancelled: nothing to compare
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.wait_ms / 1000
        pause = 0.002  # backing off to 32 ms: each look costs the loop a turn
        while not self._live_idle():
            if loop.time() + pause > deadline:
                self._count("shed")
                return
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.032)
        try:
            scored = await self.candidate.submit_nowait(
                inputs, max(deadline - loop.time(), 0.001), LOW
            )
        except (Overloaded, DeadlineExceeded):
            self._count("shed")
            return
        except Exception as exc:  # a device failed: counted and logged, never raised
            self._count("failed")
            log.warning("shadow %s of %s failed: %r", self.variant, self.model, exc)
            return
        for name, sent_output in sent.outputs.items():
            if np.issubdtype(sent_output.dtype, np.floating) and name in scored.outputs:
                agreement = compare(sent_output, scored.outputs[name], self.settings.top_k)
                self.tallies.setdefault(name, Tally()).add(agreement)
                pool = self.pools.setdefault(name, RecentRows(self.settings.pool_rows))
                pool.add(sent_output, scored.outputs[name])
        self._count("compared")
        compared = self.outcomes["compared"]
        if compared % self.gate.min_requests == 0 and self._judging is None:
            self._judging = asyncio.ensure_future(self._judge(compared))

    async def _judge(self, compared: int) -> None:
        """The gate over each output's pooled rows, off the event loop's thread (sorting the
        pool takes milliseconds; numpy lets the loop run meanwhile)."""
        try:
            for name, pool in list(self.pools.items()):
                sent, candidate = (array.copy() for array in pool.rows())
                verdict = await asyncio.to_thread(judge, sent, candidate, compared, self.gate)
                self.verdicts[name] = verdict
                log.info("shadow %s of %s, output %s: %s: %s", self.variant, self.model, name,
                         verdict.state, verdict.reason)  # fmt: skip
        finally:
            self._judging = None

    def _live_idle(self) -> bool:
        statistics = self.live.statistics()
        return statistics.queued_rows == 0 and not any(statistics.in_flight_batches.values())

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] += 1
        if self.metrics:
            self.metrics.requests.labels(self.model, self.variant, outcome).inc()

    def verdict(self) -> str:
        """fails: an output failed its latest judgement; passes: every output passed; else
        pending (fewer than min_requests compared yet)."""
        states = {self.verdicts[name].state if name in self.verdicts else "pending"
                  for name in self.tallies}  # fmt: skip
        if "fails" in states:
            return "fails"
        return "passes" if states == {"passes"} else "pending"

    def document(self) -> dict[str, Any]:
        compared = self.outcomes["compared"]
        pending = Verdict("pending", f"{compared} of {self.gate.min_requests} requests compared",
                          compared, 0)  # fmt: skip
        return {
            "candidate": self.variant,
            "sample_fraction": self.settings.sample_fraction,
            "top_k": self.settings.top_k,
            "verdict": self.verdict(),
            "requests": {outcome: self.outcomes[outcome] for outcome in OUTCOMES},
            "pending": len(self._pending),
            "outputs": {
                name: {
                    **tally.document(),
                    "gate": dataclasses.asdict(self.verdicts.get(name, pending)),
                }
                for name, tally in self.tallies.items()
            },
        }

    async def close(self) -> None:
        tasks = [*self._pending, *([self._judging] if self._judging else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.candidate.stop()
        for device in self.candidate.devices:
            await asyncio.to_thread(device.close)


class Observer(Protocol):
    """What sees each submitted request: a Shadow, or self-acceleration's sampling and shadows."""

    def offer(self, inputs: Inputs, answer: asyncio.Future[Scored]) -> None: ...

    async def close(self) -> None: ...


class Shadowed:
    """A version's scheduler with a shadow: scores as the live scheduler does (every other
    member is the live one's), and offers each submitted request to the shadow."""

    def __init__(self, live: Scheduler, shadow: Observer) -> None:
        self.live = live
        self.shadow = shadow

    @property
    def devices(self) -> Sequence[Device]:
        return self.live.devices

    @property
    def batching(self) -> BatchingConfig:
        return self.live.batching

    @property
    def running(self) -> bool:
        return self.live.running

    @property
    def served(self) -> Served:
        return self.live.served

    @property
    def metrics(self) -> ModelMetrics | None:
        return self.live.metrics

    def load(self) -> LoadReport:
        return self.live.load()

    async def drain(self, limit_seconds: float) -> None:
        await self.live.drain(limit_seconds)

    def submit_nowait(self, inputs: Inputs, timeout_seconds: float | None = None,
                      priority: int = HIGH) -> asyncio.Future[Scored]:  # fmt: skip
        answer = self.live.submit_nowait(inputs, timeout_seconds, priority)
        self.shadow.offer(inputs, answer)
        return answer

    async def stop(self) -> None:
        await self.shadow.close()
        await self.live.stop()


def shadow_device(version: ServableVersion, settings: Settings,
                  ) -> tuple[DeviceSettings, VariantFile] | None:  # fmt: skip
    """The variant [shadow] candidates names for the version's model and the first device here
    that runs it; None when none is named. Pure (start-up checks a repository with it): raises
    ValueError naming the setting when the version has no such variant or no device runs it."""
    name = settings.shadow.candidates.get(version.model)
    if name is None:
        return None
    where = f"shadow.candidates.{version.model}: {version.model} version {version.number}"
    variant = version.variants.get(name)
    if variant is None:
        known = ", ".join(sorted(version.variants))
        raise ValueError(f"{where} has no variant {name!r} (it has {known})")
    for config, _ in plan_devices(version, settings):
        if RUNTIME_OF_BACKEND[config.backend] in variant.runtimes:
            return config, variant
    raise ValueError(f"{where}: no device here runs {name!r} ({', '.join(variant.runtimes)})")


async def start_shadow(version: ServableVersion, live: Scheduler, settings: Settings, cores: int,
                       slots: Mapping[str, asyncio.Semaphore] | None,
                       metrics: ShadowMetrics | None) -> Shadow | None:  # fmt: skip
    """The version's variant candidate (`shadow_device`); None when none is named."""
    chosen = shadow_device(version, settings)
    if chosen is None:
        return None
    config, variant = chosen
    return await start_candidate(version, config, variant, variant.name, live, settings, cores,
                                 slots, metrics)  # fmt: skip


def version_shadow(model: str, served: list[int], settings: Settings) -> tuple[int, int] | None:
    """Pure: (the live version, the candidate version) [shadow] versions names for the model:
    the candidate shadows the latest other version served; None when none is named. Raises
    ValueError naming the setting when the candidate or another version is not served."""
    candidate = settings.shadow.versions.get(model)
    if candidate is None:
        return None
    where = f"shadow.versions.{model}: version {candidate}"
    if candidate not in served:
        raise ValueError(f"{where} is not served (serving {', '.join(map(str, sorted(served)))}; "
                         "its config.toml's version_policy says which)")  # fmt: skip
    others = [number for number in served if number != candidate]
    if not others:
        raise ValueError(f"{where} is the only version served: nothing to shadow")
    if model in settings.shadow.candidates:
        raise ValueError(f"{where}: shadow.candidates names a variant for {model} too; one shadow")
    return max(others), candidate


async def start_candidate(version: ServableVersion, config: DeviceSettings, variant: VariantFile,
                          label: str, live: Scheduler, settings: Settings, cores: int,
                          slots: Mapping[str, asyncio.Semaphore] | None,
                          metrics: ShadowMetrics | None) -> Shadow:  # fmt: skip
    """`variant` of `version` on its own device (sharing the batch slots of the live device of
    that name), warmed up, shadowing `live`; `label` names it in metrics and the document."""
    # Named apart from the live device (the fault switch tells them apart), sharing its slots.
    named = config.model_copy(update={"name": f"{config.name}{SHADOW_DEVICE_SUFFIX}"})
    device = await asyncio.to_thread(create_device, version, named, variant, settings, cores,
                                     slots.get(config.name) if slots else None)  # fmt: skip
    try:
        sizes = settings.routing.warmup_rows if version.batched else (1,)
        await asyncio.to_thread(device.warm_up, warmup_inputs(version, max(sizes)), sizes)
    except BaseException:
        await asyncio.to_thread(device.close)
        raise
    candidate = Scheduler([device], make_router(settings.routing.policy), live.batching)
    candidate.start()
    log.info("%s: %s (%s of version %d) shadows %.1f%% of its requests on device %s (%s)",
             version.model, label, variant.name, version.number,
             100 * settings.shadow.sample_fraction, device.name, config.backend)  # fmt: skip
    gate = Gate(settings.shadow.min_requests, settings.gate.numerics_min_spearman,
                settings.gate.numerics_max_distinct_change)  # fmt: skip
    return Shadow(version.model, label, live, candidate, settings.shadow, gate, metrics)

"""The data plane: everything a transport asks of the server, with no transport in it.

REST (`app.http`), gRPC (`app.grpc`) and the engine process's link (`app.workers.engine`) parse
their own wire formats, call one `DataPlane` and render what it returns; its errors carry an HTTP
status that each transport maps to its own. It knows no process model either: it scores through
`Models` and each version's `Scoring`, which the entry point (`app.__main__`) chose once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.dataplane import canary, documents
from app.dataplane.admission import PRIORITIES, Admission, Decision
from app.dataplane.catalog import Models
from app.dataplane.devices import example_inputs
from app.dataplane.errors import Forbidden, PayloadTooLarge, Unauthorized, Unprocessable
from app.dataplane.features import RedisFeatures
from app.dataplane.ranking import Ranker
from app.dataplane.schemas import RankRequest, ScoreRequest
from app.dataplane.serving import Serving
from app.dataplane.tensors import check_against, check_built, rows_array
from app.settings import CanarySplit
from config.settings import Settings
from models.artifacts.feature_tables import CATEGORICAL_INPUT, DENSE_INPUT
from models.artifacts.model_config import ModelConfig
from models.artifacts.repository import ModelVersion, RepositoryError
from scheduler.batch import Inputs, Scored
from scheduler.errors import InvalidInput, NotReady, UnknownModel
from scheduler.faults import FaultMode
from scheduler.load import LoadReport, combine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    """A request's deadline and priority, the caller's within its model's defaults."""

    timeout_seconds: float
    priority: int


@dataclass(frozen=True)
class Inferred:
    serving: Serving  # the version that scored it
    outputs: dict[str, np.ndarray]  # the outputs asked for, in the order asked


class DataPlane:
    def __init__(self, settings: Settings, models: Models, admission: Admission,
                 features: RedisFeatures | None = None) -> None:  # fmt: skip
        self.settings = settings
        self.models = models
        self.admission = admission
        self.features = features  # None: /v1/rank reads the version's own tables
        self.started = False  # the start-up models are loaded
        self.draining = False  # SIGTERM: not ready, new requests refused
        # [canary] splits, as the repository API changed them since start-up (not kept on restart)
        self.splits: dict[str, CanarySplit] = dict(settings.canary.splits)

    # -- life --

    async def start(self) -> None:
        if self.features is not None:
            await self.features.start()
        try:
            await self.models.start()
        except BaseException:
            await self.models.close()
            raise
        self.started = True
        served = [f"{s.version.model} version {s.version.number}" for s in self.models.serving()]
        log.info("ready: %s", ", ".join(served) or "no model loaded")
        for name, split in self.splits.items():
            log.info("%s", canary.describe(name, split))

    def drain(self) -> None:
        self.draining = True

    async def close(self) -> None:
        self.started = False
        await self.models.close()
        if self.features is not None:
            await self.features.close()

    # -- state --

    def ready(self) -> bool:
        """The start-up models loaded, every loaded model with a ready version on a healthy
        device, none saturated, not draining."""
        return self.started and not self.draining and self.models.ready()

    def catalog(self) -> Models:
        if not self.started:
            raise NotReady("the models are not loaded yet")
        return self.models

    def accepting(self) -> Models:
        """The models, once the start-up models are loaded and while not draining."""
        if self.draining:
            raise NotReady("draining: this replica is shutting down")
        return self.catalog()

    def model(self, name: str, version: str | None = None) -> Serving:
        """The version a request names (None: the latest ready one)."""
        return self.catalog().get(name, version)

    def route(self, name: str, version: str | None, key: str | None) -> Serving:
        """The version that serves a request: the one it names; else, with a canary split for
        the model ([canary]), the canary for its share of keys and the latest other ready version
        for the rest; else the latest ready one."""
        models = self.accepting()
        split = self.splits.get(name)
        if version is not None or split is None:
            return models.get(name, version)
        served = models.versions(name)
        if canary.to_canary(key, split.share, split.promoted) and split.version in served:
            chosen = models.get(name, str(split.version))
            if chosen.ready:
                return chosen
        for number in reversed(served):
            stable = models.get(name, str(number))
            if number != split.version and stable.ready:
                return stable
        return models.get(name)

    def admit(self, low_priority: bool | None) -> bool:
        """Count an inference request in (True), or refuse it (False, counted as a refusal);
        one that is counted in is counted out with `admission.leave()`."""
        admission = self.admission
        if admission.decide(low_priority) is Decision.REFUSE:
            admission.on_refusal()
            return False
        admission.enter()
        return True

    def options(self, config: ModelConfig, timeout_ms: float | None,
                priority: int | None) -> Options:  # fmt: skip
        """The caller may shorten its model's deadline, never lengthen it; a priority not given
        is the model's default (its config.toml's, else [admission]'s)."""
        admission = self.settings.admission
        default_ms = config.default_timeout_ms or admission.default_timeout_ms
        if priority is None:
            priority = PRIORITIES[config.default_priority or admission.default_priority]
        ms = default_ms if timeout_ms is None else min(default_ms, timeout_ms)
        return Options(ms / 1000, priority)

    # -- scoring --

    async def infer(self, name: str, version: str | None, tensors: dict[str, np.ndarray],
                    outputs: Sequence[str] = (), timeout_ms: float | None = None,
                    priority: int | None = None, key: str | None = None) -> Inferred:  # fmt: skip
        """A V2 request's decoded tensors, checked against the model's inputs and scored; the
        outputs named (all of them when none is). `key`: its routing key (a canary split's). No
        await before the submit: a version swapped out meanwhile is never submitted to."""
        serving = self.route(name, version, key)
        if not serving.ready:
            raise NotReady(f"model {name!r} is not ready")
        version_ = serving.version
        signature = version_.signature
        wanted = wanted_outputs(outputs, signature.output_names)
        options = self.options(version_.config, timeout_ms, priority)
        batched = version_.batched
        inputs = check_against(tensors, signature.input_specs,
                               self.settings.limits.max_rows_per_request, batched)  # fmt: skip
        if serving.built is not None:
            check_built(inputs, serving.built.manifest)
        if not batched:  # the scheduler's batch axis, of one row; the backend takes it off
            inputs = {key: array[np.newaxis] for key, array in inputs.items()}
        scored = await serving.scheduler.submit_nowait(
            inputs, options.timeout_seconds, options.priority
        )
        answer = {key: scored.outputs[key] if batched else scored.outputs[key][0] for key in wanted}
        return Inferred(serving, answer)

    def submit_nowait(self, name: str, version: str, inputs: Inputs, timeout_seconds: float | None,
                      priority: int) -> asyncio.Future[Scored]:  # fmt: skip
        """Arrays already checked by the process that decoded them (an HTTP worker), scored
        here: the scheduler's future."""
        return self.model(name, version).scheduler.submit_nowait(inputs, timeout_seconds, priority)

    def ranking(self, user_id: str | None = None) -> tuple[Serving, Ranker]:
        """The /v1 model: a version served with feature tables and a ranking spec (a canary
        split's for this user)."""
        name = self.settings.model.name
        serving = self.route(name, None, user_id)
        if serving.ranker is None:
            raise UnknownModel(
                f"model {name!r} has no feature tables and ranking spec ([ranking] in its "
                "config.toml) for /v1; call it through V2 (/v2/models/{name}/infer)"
            )
        if not serving.ready:
            raise NotReady(f"model {name!r} is not ready")
        return serving, serving.ranker

    async def rank(self, body: RankRequest, timeout_ms: float | None = None,
                   priority: int | None = None) -> dict[str, Any]:  # fmt: skip
        """The top k of the candidates for the user, as the RankResponse document."""
        serving, ranker = self.ranking(str(body.user_id))
        options = self.options(serving.version.config, timeout_ms, priority)
        if self.features is None:
            candidates = ranker.candidates(body)
        else:
            context = ranker.context(body)
            rows = await self.features.rows(
                ranker.model_name, ranker.codec, ranker.tables, str(body.user_id),
                ranker.candidate_ids(body), body.exclude_seen, options.timeout_seconds,
            )  # fmt: skip
            candidates = ranker.scored(body, rows, context)
        scores = np.empty(0, dtype=np.float32)
        devices: tuple[str, ...] = ()
        if candidates.inputs is not None:
            scored = await serving.scheduler.submit_nowait(
                candidates.inputs, options.timeout_seconds, options.priority
            )
            scores, devices = scored.outputs[ranker.assembler.score_output], scored.devices
        variants = {d: serving.variants[d].name for d in devices}
        return ranker.response(candidates, scores, variants, body.k)

    def built(self, route: str) -> tuple[Serving, ModelVersion]:
        """The /v1 model as `python -m models build` wrote it (its manifest and tables)."""
        serving, ranker = self.ranking()
        if serving.built is None:
            raise UnknownModel(
                f"{route} serves a model built by `python -m models build`; "
                f"{ranker.model_name!r} is a plain model (use V2 infer)"
            )
        return serving, serving.built

    async def score_rows(self, body: ScoreRequest, timeout_ms: float | None = None,
                         priority: int | None = None) -> dict[str, Any]:  # fmt: skip
        """Raw feature rows of the built /v1 model, scored: the ScoreResponse document."""
        serving, built = self.built("/v1/score")
        manifest = built.manifest
        rows, limit = len(body.categorical), self.settings.limits.max_rows_per_request
        if rows > limit:
            raise PayloadTooLarge(f"categorical: {rows} rows, limit {limit}")
        if len(body.dense) != rows:
            raise Unprocessable(f"dense: {len(body.dense)} rows, categorical has {rows}")
        inputs = {
            CATEGORICAL_INPUT: rows_array(body.categorical, np.int64,
                                          len(manifest.categorical_fields), CATEGORICAL_INPUT),
            DENSE_INPUT: rows_array(body.dense, np.float32, len(manifest.dense_fields),
                                    DENSE_INPUT),
        }  # fmt: skip
        check_built(inputs, manifest)
        options = self.options(serving.version.config, timeout_ms, priority)
        scored: Scored = await serving.scheduler.submit_nowait(
            inputs, options.timeout_seconds, options.priority
        )
        return {
            "model_name": manifest.model_name,
            "model_version": manifest.model_version,
            "variants": {d: serving.variants[d].name for d in scored.devices},
            "scores": scored.scores.astype(float).tolist(),
        }

    async def examples(self, ids: int, rows: int) -> dict[str, Any]:
        """What a load generator on another machine needs: known user and item ids (the first
        `ids` of each) for /v1/rank, and real feature rows for /v1/score and V2 infer bodies."""
        limit = self.settings.limits.max_rows_per_request
        if rows > limit:
            raise Unprocessable(f"rows: at most {limit}, got {rows}")
        _, version = self.built("/v1/examples")
        sample = await asyncio.to_thread(example_inputs, version, rows)
        return {
            "model_name": version.manifest.model_name,
            "model_version": version.manifest.model_version,
            "user_ids": [str(u) for u in version.tables.user_ids[:ids]],
            "item_ids": [str(i) for i in version.tables.item_ids[:ids]],
            "inputs": {name: array.tolist() for name, array in sample.items()},
        }

    # -- documents --

    def metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        return documents.metadata(self.model(name, version), self.models.versions(name))

    def config(self, name: str, version: str | None = None) -> dict[str, Any]:
        return documents.config(self.model(name, version))

    def statistics(self, name: str = "", version: str | None = None) -> dict[str, Any]:
        """One version's (or every version's, with no name)."""
        served = [self.model(name, version)] if name else self.catalog().serving()
        return documents.statistics(served)

    def shadow(self, name: str, version: str | None = None) -> dict[str, Any]:
        """How the version's shadow candidate agrees with what it served ([shadow]); its
        candidate null when none shadows it."""
        serving = self.model(name, version)
        report = serving.shadow.document() if serving.shadow else {"candidate": None}
        return {"name": name, "version": str(serving.version.number), **report}

    def model_ready(self, name: str, version: str | None = None) -> bool:
        return self.model(name, version).ready

    # -- model control --

    def authorize(self, credential: str | None) -> None:
        """Model control and fault injection: `[faults] admin_token`, when set, as a bearer
        token (compared in constant time)."""
        token = self.settings.faults.admin_token
        if token and not hmac.compare_digest((credential or "").encode(), token.encode()):
            raise Unauthorized("Authorization: a bearer token ([faults] admin_token) is required")

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every model in the repository or loaded, by version, with its state and reason."""
        rows = self.accepting().index()
        return [row for row in rows if row["state"] == "READY"] if ready_only else rows

    async def load_model(self, name: str, credential: str | None) -> None:
        """(Re)load a model from its folder; returns once its versions serve, or raises saying
        why it could not (what served before still serving)."""
        models = self._controllable(credential)
        try:
            await models.load(name)
        except (RepositoryError, ValueError) as exc:
            raise InvalidInput(f"failed to load {name!r}: {exc}") from None

    async def unload_model(self, name: str, credential: str | None) -> None:
        """Stop serving the model; requests already queued on it finish first."""
        await self._controllable(credential).unload(name)

    def _controllable(self, credential: str | None) -> Models:
        self.authorize(credential)
        models = self.accepting()
        mode = self.settings.model_control.mode
        if mode != "explicit":
            raise Forbidden(
                f'load and unload need [model_control] mode = "explicit" (it is {mode!r})'
            )
        return models

    def canary(self, name: str) -> dict[str, Any]:
        """The model's canary split now (None: none) and the versions it serves."""
        served = self.accepting().versions(name)
        if not served:
            raise UnknownModel(f"model {name!r} is not loaded")
        split = self.splits.get(name)
        return {"model": name, "split": split.model_dump() if split else None,
                "versions": [str(v) for v in served]}  # fmt: skip

    def set_canary(self, name: str, split: CanarySplit | None,
                   credential: str | None) -> dict[str, Any]:  # fmt: skip
        """Give the model's canary version a share, promote it, or (None) take the split back;
        logged. One process's routing: refused with worker processes, each routing alone."""
        self.authorize(credential)
        if self.settings.server.workers > 1:
            raise Forbidden("canary changes need [server] workers = 1 (each worker routes alone; "
                            "set [canary] splits and restart)")  # fmt: skip
        served = self.accepting().versions(name)
        if not served:
            raise UnknownModel(f"model {name!r} is not loaded")
        if split is not None:
            problem = canary.split_problem(split, served)
            if problem is not None:
                raise InvalidInput(problem)
            self.splits[name] = split
        else:
            self.splits.pop(name, None)
        log.info("%s", canary.describe(name, split))
        return self.canary(name)

    async def set_fault(self, device: str, mode: FaultMode) -> None:
        if not await self.accepting().set_fault(device, mode):
            raise UnknownModel(f"device {device!r} is not served here")

    # -- load, for balancers and autoscalers --

    def load(self, in_flight: int) -> LoadReport | None:
        """Every served version's load, combined, its headroom capped by the front end's with
        `in_flight` requests; None before start-up or with no model loaded."""
        served = self.models.serving() if self.started else []
        if not served:
            return None
        report = combine([s.scheduler.load() for s in served])
        headroom = min(report.headroom, self.admission.headroom(in_flight))
        return dataclasses.replace(report, headroom=headroom)

    def agent_reply(self) -> str:
        """HAProxy's agent check: the replica's weight as a percentage of its configured one."""
        if self.draining:
            return "drain\n"
        report = self.load(self.admission.in_flight)
        if report is None or not report.healthy_devices:
            return "down\n"
        return f"up {max(1, report.headroom)}%\n"

    def refresh_metrics(self, in_flight: int) -> None:
        """The gauges a scrape reports, as of now."""
        self.models.refresh_metrics(self.admission.headroom(in_flight))


def wanted_outputs(asked: Sequence[str], names: Sequence[str]) -> Sequence[str]:
    """The outputs a request names, in its order; all of them when it names none."""
    if not asked:
        return names
    unknown = [n for n in asked if n not in names]
    if unknown:
        raise InvalidInput(
            f"outputs: {unknown[0][:64]} is not an output (the model has {', '.join(names)})"
        )
    if len(set(asked)) != len(asked):
        raise InvalidInput("outputs: an output is named twice")
    return list(asked)

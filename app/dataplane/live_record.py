"""Self-acceleration's decisions, pure: whether a served version is self-accelerated, which built
variants are worth shadowing, and the acceleration record live traffic gates (written beside the
model, so a restart serves what was promoted, and rewritten when a promoted variant drifts)."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from config.settings import Settings
from models.artifacts.acceleration_record import (
    RECORD,
    AcceleratedVariant,
    AccelerationRecord,
    LiveEvidence,
    RowsRef,
    fastest,
    live_note,
)
from models.artifacts.repository import FileRef
from models.artifacts.servable import PLAIN_VARIANT, ServableVersion

SOURCE = "model.onnx"
LIVE_ROWS = "live requests"  # what the record's rows references name
GPU_BACKEND = "onnxruntime-gpu"


@dataclass(frozen=True)
class Built:
    """One variant `python -m models.live_variants` built and timed (the source among them)."""

    name: str
    file: str
    format: str
    precision: str
    hint: str | None
    runtimes: tuple[str, ...]
    latency_ms: Mapping[str, Mapping[str, float]]  # runtime -> batch rows -> median ms

    @classmethod
    def parse(cls, entry: Mapping[str, Any]) -> Built:
        return cls(entry["name"], entry["file"], entry["format"], entry["precision"],
                   entry["hint"], tuple(entry["runtimes"]), entry["latency_ms"])  # fmt: skip


def not_self_accelerated(version: ServableVersion, settings: Settings,
                         record: AccelerationRecord | None) -> str | None:  # fmt: skip
    """Why the version is not self-accelerated (None: it is): off, not a plain batched ONNX
    model, a record gated on held-out rows decides, a variant pinned, or another shadow."""
    model = version.model
    reasons = (
        (not settings.self_acceleration.enabled, "[self_acceleration] enabled is false"),
        (version.built is not None, "a built version: its manifest's variants were gated at build"),
        (not (version.path / SOURCE).is_file(), f"needs a plain {SOURCE}"),
        (not version.batched, "needs a batch axis"),
        (record is not None and record.gated_on != "live traffic",
         f"its {RECORD}, gated on held-out rows, decides what serves"),
        (bool(version.config.variants), "its config.toml names the variants its devices run"),
        (model in settings.shadow.candidates or model in settings.shadow.versions,
         "[shadow] names a candidate for it"),
        (not os.access(version.path, os.W_OK), f"cannot write to {version.path}"),
    )  # fmt: skip
    return next((why for applies, why in reasons if applies), None)


def relative_latency(built: Built, source: Built, runtime: str, max_rows: int) -> float:
    """The geometric mean, over the batch sizes up to `max_rows` timed, of the variant's latency
    on `runtime` relative to the source's best over the runtimes both were timed on."""
    mine = built.latency_ms.get(runtime, {})
    sizes = [rows for rows in mine if int(rows) <= max_rows] or list(mine)[:1]
    ratios = []
    for rows in sizes:
        best = min(cells[rows] for cells in source.latency_ms.values() if rows in cells)
        ratios.append(mine[rows] / best)
    return statistics.geometric_mean(ratios) if ratios else math.inf


def worth_shadowing(built: Sequence[Built], runtimes: set[str], max_rows: int,
                    min_speedup: float) -> list[tuple[Built, str, float]]:  # fmt: skip
    """(variant, the served runtime it is fastest on, its relative latency) for each variant at
    least `min_speedup` times faster than the source, fastest first."""
    source = next(b for b in built if b.name == PLAIN_VARIANT)
    chosen = []
    for variant in built:
        if variant.name == PLAIN_VARIANT:
            continue
        options = [(relative_latency(variant, source, r, max_rows), r)
                   for r in variant.runtimes if r in runtimes]  # fmt: skip
        if options:
            ratio, runtime = min(options)
            if ratio <= 1 / min_speedup:
                chosen.append((variant, runtime, ratio))
    return sorted(chosen, key=lambda entry: entry[2])


def live_record(built: Sequence[Built], gates: Mapping[str, str],
                passed: set[str], evidence: LiveEvidence, cpu: str, calibration_rows: int,
                judged_rows: int, max_rows: int, refs: Mapping[str, FileRef],
                sizes: Mapping[str, int]) -> AccelerationRecord:  # fmt: skip
    """The record of variants live traffic gated: the source and every variant built, servable
    where its shadow passed; `gates`: each variant's one-line reason; `refs` and `sizes`: each
    file's reference (with its SHA-256) and bytes."""
    variants = tuple(
        AcceleratedVariant(
            name=b.name,
            file=refs[b.file],
            format=b.format,
            precision=b.precision,
            execution_hint=b.hint,
            device="cpu",
            runtimes=b.runtimes,
            size_bytes=sizes[b.file],
            servable=b.name == PLAIN_VARIANT or b.name in passed,
            gate=gates.get(b.name, "the source"),
            outputs={},
            scored_with="live traffic",
            latency_ms={r: dict(cells) for r, cells in b.latency_ms.items()},
        )
        for b in built
    )  # fmt: skip
    record = AccelerationRecord(
        schema_version=1,
        created_at=evidence.judged_at,
        source=refs[SOURCE],
        cpu=cpu,
        eval_rows=RowsRef(file=LIVE_ROWS, rows=judged_rows),
        calibration_rows=RowsRef(file=LIVE_ROWS, rows=calibration_rows),
        variants=variants,
        default_variants={},
        gated_on="live traffic",
        live=evidence,
    )
    return with_defaults(record, max_rows)


def with_defaults(record: AccelerationRecord, max_rows: int) -> AccelerationRecord:
    """The record with each CPU runtime's default the fastest servable variant (the GPU's the
    source: no variant was gated for it here), and why, naming the live evidence."""
    defaults, reasons = {GPU_BACKEND: PLAIN_VARIANT}, {GPU_BACKEND: "no variant gated for GPUs"}
    for backend, runtime in (("openvino-cpu", "openvino"), ("onnxruntime-cpu", "onnxruntime")):
        name, why = fastest(record.variants, runtime, max_rows)
        defaults[backend], reasons[backend] = name, why + live_note(record, name)
    return record.model_copy(update={"default_variants": defaults, "default_reasons": reasons})


def demoted(record: AccelerationRecord, variant: str, reason: str, at: str,
            max_rows: int) -> AccelerationRecord:  # fmt: skip
    """The record with `variant` no longer servable: it drifted from the source after promotion."""
    assert record.live is not None
    why = f"demoted at {at}: {reason}"
    variants = tuple(
        v.model_copy(update={"servable": False, "gate": f"{why} (was: {v.gate})"})
        if v.name == variant else v
        for v in record.variants
    )  # fmt: skip
    live = record.live.model_copy(update={"demoted": {**record.live.demoted, variant: why}})
    return with_defaults(record.model_copy(update={"variants": variants, "live": live}), max_rows)

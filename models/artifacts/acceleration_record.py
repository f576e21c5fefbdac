"""`acceleration.json`: what `python -m models accelerate` wrote beside a plain model (numpy and
pydantic only; the serving path reads it).

Each variant with its file and SHA-256, its precision and the runtimes that may serve it, the
gate's verdict per output and in one line, and its latency per runtime and batch size on the CPU
it was measured on; the default variant per backend is the fastest servable one there.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.artifacts.repository import FileRef, RepositoryError

RECORD = "acceleration.json"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RowsRef(Strict):
    file: str
    rows: int
    labelled_outputs: tuple[str, ...] = ()


class AcceleratedVariant(Strict):
    name: str
    file: FileRef
    weights_file: FileRef | None = None
    format: Literal["onnx", "openvino-ir"]
    precision: Literal["fp32", "fp16", "bf16", "int8"]
    execution_hint: str | None = None  # OpenVINO's INFERENCE_PRECISION_HINT it runs with
    device: Literal["cpu", "gpu"]
    runtimes: tuple[Literal["onnxruntime", "openvino"], ...]
    size_bytes: int
    servable: bool
    gate: str  # one line: why it is (not) servable
    outputs: dict[str, dict[str, float]]  # output -> the gate's figures
    scored_with: str  # the runtime and precision the figures come from
    latency_ms: dict[str, dict[str, float]]  # runtime -> batch rows -> median ms (CPU only)


class LiveEvidence(Strict):
    """How live traffic gated the variants: the server's self-acceleration, with no rows of the
    user's but the requests it answered."""

    sample_fraction: float  # the share of live requests each candidate scored
    min_requests: int  # compared requests a verdict needs
    started_at: str  # the first sampled request
    judged_at: str
    requests: dict[str, int]  # variant -> requests compared when it was judged
    build_seconds: float | None = None  # building and timing the variants, wall clock
    build_cpu_seconds: float | None = None  # and CPU (the child process at low priority)
    demoted: dict[str, str] = Field(default_factory=dict)  # variant -> when and why (drift)


class AccelerationRecord(Strict):
    schema_version: Literal[1]
    created_at: str
    source: FileRef
    parameters: int | None = None  # the source's weights: every variant holds as many
    cpu: str  # the CPU model the latencies were measured on
    eval_rows: RowsRef
    calibration_rows: RowsRef
    variants: tuple[AcceleratedVariant, ...]
    default_variants: dict[str, str]  # backend ("openvino-cpu", ...) -> the fastest servable
    default_reasons: dict[str, str] = Field(default_factory=dict)  # backend -> why
    # "live traffic": written by the server (self-acceleration), which keeps watching it
    gated_on: Literal["held-out rows", "live traffic"] = "held-out rows"
    live: LiveEvidence | None = None


def read_record(path: Path) -> AccelerationRecord:
    target = path / RECORD
    try:
        return AccelerationRecord.model_validate_json(target.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RepositoryError(f"{target}: cannot read it: {exc}") from None
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RepositoryError(f"{target}: not a valid record: {where}: {first['msg']}") from None


def write_record(path: Path, record: AccelerationRecord) -> None:
    """Whole or not at all: a server reloading as it is written reads the old record or the new
    one (a hidden temporary file, renamed over it)."""
    text = json.dumps(record.model_dump(mode="json"), indent=2)
    partial = path / f".{RECORD}.partial"
    partial.write_text(text + "\n", encoding="utf-8")
    os.replace(partial, path / RECORD)


def cpuinfo(field: str) -> str | None:
    """The first `field` of /proc/cpuinfo (None where it is absent, or the file: not Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """This machine's CPU model, as /proc/cpuinfo names it (the platform's name elsewhere)."""
    import platform

    return cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags as /proc/cpuinfo lists them (none where it does not)."""
    return frozenset((cpuinfo("flags") or "").split())


def live_note(record: AccelerationRecord, variant: str) -> str:
    """What gated `variant` on live traffic, for the reason a record's default is served."""
    if record.live is None or variant not in record.live.requests:
        return ""
    live = record.live
    return (f"; gated on live traffic: {live.requests[variant]:,} requests compared, "
            f"{live.started_at} to {live.judged_at}")  # fmt: skip


def fastest(variants: tuple[AcceleratedVariant, ...] | list[AcceleratedVariant], runtime: str,
            max_rows: int | None = None) -> tuple[str, str]:  # fmt: skip
    """The servable variant the runtime runs fastest (the geometric mean of its latency relative
    to the source's over the batch sizes timed, those up to `max_rows` when given: the batches
    the server will run), and why."""
    source = next(v for v in variants if v.name == "model").latency_ms[runtime]
    sizes = [rows for rows in source if max_rows is None or int(rows) <= max_rows]
    sizes = sizes or [min(source, key=int)]

    def relative(variant: AcceleratedVariant) -> float:
        mine = variant.latency_ms[runtime]
        ratios = [mine[rows] / source[rows] for rows in sizes if rows in mine]
        return statistics.geometric_mean(ratios) if ratios else math.inf

    timed = [v for v in variants if v.servable and runtime in v.latency_ms]
    best = min(timed, key=relative)
    up_to = f", batches of {', '.join(sizes)} rows" if max_rows is not None else ""
    return best.name, (
        f"the fastest servable variant on {runtime} here: {relative(best):.2f}x the source's "
        f"latency (geometric mean over {len(sizes)} batch sizes{up_to})"
    )

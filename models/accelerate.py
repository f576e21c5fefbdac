"""`python -m models accelerate <root>/<model>/<version>`: numerics-only variants of any plain
ONNX model, each gated on the user's held-out rows, timed side by side, and recorded beside it.

Variants of `model.onnx`, written into the same version folder:
- `int8`: INT8 for ONNX Runtime, static QDQ, per-channel int8 weights, int8 activations calibrated
  (min-max) on the calibration rows; `int8-tables` the same with the embedding tables (Gather of a
  2-D initializer) quantized too, a quarter of their size, where the model has any;
- `openvino-int8`: OpenVINO IR quantized to INT8 by NNCF on the same rows;
- `openvino-fp16`: OpenVINO IR with FP16 weights (embedding tables included: half their size
  on disk and in memory), computed at FP32, slower: for a model whose tables strain memory;
- `fp16`: FP16 for the CUDA provider (float32 at the inputs and outputs, and from the output
  layers on: a narrow score distribution would collapse in FP16's resolution);
- `bf16`: the source run by OpenVINO at BF16, recorded where this CPU executes BF16.
The layers that produce the outputs (the last Gemm or MatMul before each output) stay float in
both INT8 variants unless `--quantize-outputs`: an int8 output layer quantizes the logit and
collapses the scores into a few values, which the gate refuses.

The gate, per variant and per float output, against the source run by ONNX Runtime at FP32 on the
held-out rows: with binary labels for that output, AUC, log loss, Spearman and distinct scores
(`[gate] numerics_*`), with a paired bootstrap interval of the AUC difference; without labels,
agreement only (Spearman, the change in distinct scores, the largest absolute difference). A
variant that fails any output is recorded with `servable: false` and its reason, and never served.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from config.settings import Settings
from models import quantize
from models.artifacts.acceleration_record import (
    AcceleratedVariant,
    AccelerationRecord,
    RowsRef,
    cpu_model,
    fastest,
    write_record,
)
from models.artifacts.repository import RepositoryError, file_ref
from models.artifacts.servable import PLAIN_FILES
from models.artifacts.signature import Signature, read_signature
from models.benchmark import Runner, benchmark
from models.gate import Verdict, numerics_gate, paired_bootstrap_auc_difference, spearman
from models.graph_statistics import graph_statistics
from models.rows_file import Rows, read_rows
from models.runtime import OnnxRuntimeSession, OpenVinoSession
from models.settings import BenchmarkSettings, GateSettings

log = logging.getLogger(__name__)
SOURCE = "model.onnx"
BUILD_REPORT = "build.md"  # the structural half of report.md, from `build --data`
SCORING_ROWS = 1024  # rows per call while scoring the held-out rows
# Ops between an output layer and a graph output that leave its values in place (elementwise,
# shape): looking back through them from an output finds the layer that produced it.
PASS_THROUGH = {
    "Sigmoid", "Softmax", "Tanh", "Relu", "Reshape", "Squeeze", "Unsqueeze", "Flatten",
    "Identity", "Cast", "Gather", "Add", "Mul", "Concat", "Slice", "Transpose",
}  # fmt: skip
Outputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class Candidate:
    name: str
    file: Path
    format: str
    precision: str
    device: str
    runtimes: tuple[str, ...]
    hint: str | None = None  # OpenVINO inference precision

    def session(self, runtime: str, threads: int = 0) -> Callable[[Outputs], Outputs]:
        if runtime == "openvino":
            return OpenVinoSession(self.file, self.hint or "f32", threads).run_all  # type: ignore[arg-type]
        return OnnxRuntimeSession(self.file, threads).run_all


def output_path(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes from each output layer (the last Gemm or MatMul before a graph output) to the
    output, found by walking back from the outputs through PASS_THROUGH ops."""
    producer = {out: node for node in model.graph.node for out in node.output}
    found: list[onnx.NodeProto] = []
    frontier = [o.name for o in model.graph.output]
    seen: set[str] = set()
    while frontier:
        tensor = frontier.pop()
        node = producer.get(tensor)
        if node is None or tensor in seen:
            continue
        seen.add(tensor)
        if node.op_type in ("Gemm", "MatMul") or node.op_type in PASS_THROUGH:
            found.append(node)
        if node.op_type in PASS_THROUGH:
            frontier += list(node.input)
    return found


def output_layers(model: onnx.ModelProto) -> list[str]:
    return [n.name for n in output_path(model) if n.op_type in ("Gemm", "MatMul")]


def embedding_tables(model: onnx.ModelProto) -> list[str]:
    """The Gather nodes that read rows of a 2-D initializer: embedding tables."""
    tables = {i.name for i in model.graph.initializer if len(i.dims) == 2}
    return [n.name for n in model.graph.node if n.op_type == "Gather" and n.input[0] in tables]


def named(source: Path, target: Path) -> Path:
    """A copy whose every node has a name (quantizers exclude nodes by name)."""
    model = onnx.load(str(source))
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"
    onnx.save(model, str(target))
    return target


def bf16_supported() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def run_rows(run: Callable[[Outputs], Outputs], inputs: Outputs) -> Outputs:
    total = len(next(iter(inputs.values())))
    parts: list[Outputs] = []
    for start in range(0, total, SCORING_ROWS):
        parts.append(run({k: v[start : start + SCORING_ROWS] for k, v in inputs.items()}))
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def agreement_gate(reference: np.ndarray, candidate: np.ndarray, settings: GateSettings,
                   ) -> tuple[Verdict, dict[str, float]]:  # fmt: skip
    """Without labels: the variant must rank rows as the source does and keep its scores apart."""
    rho = spearman(reference, candidate)
    distinct_ref, distinct = len(np.unique(reference)), len(np.unique(candidate))
    change = abs(distinct - distinct_ref) / max(distinct_ref, 1)
    difference = float(np.max(np.abs(reference.astype(np.float64) - candidate)))
    figures = {"spearman": rho, "distinct": distinct, "distinct_source": distinct_ref,
               "max_abs_difference": difference}  # fmt: skip
    text = (f"Spearman {rho:.5f}, {distinct:,} distinct scores vs {distinct_ref:,}, max |diff| "
            f"{difference:.2e}")  # fmt: skip
    if rho < settings.numerics_min_spearman:
        return Verdict(False, f"Spearman {rho:.5f} < {settings.numerics_min_spearman}"), figures
    if change > settings.numerics_max_distinct_change:
        return Verdict(
            False, f"scores collapse: {distinct:,} distinct vs {distinct_ref:,}"
        ), figures
    return Verdict(True, "passes: " + text), figures


def gate_variant(reference: Outputs, candidate: Outputs, rows: Rows, settings: Settings,
                 ) -> tuple[Verdict, dict[str, dict[str, float]]]:  # fmt: skip
    """Every output: float ones by the numerics gate (labels) or agreement (none); others equal."""
    figures: dict[str, dict[str, float]] = {}
    reasons = []
    for name, expected in reference.items():
        got = candidate[name].astype(np.float64).reshape(-1)
        want = expected.astype(np.float64).reshape(-1)
        if expected.dtype.kind != "f":
            same = bool(np.array_equal(expected, candidate[name]))
            figures[name] = {"equal": float(same)}
            verdict = Verdict(same, "equal" if same else "differs from the source")
        elif name in rows.labels:
            labels = rows.labels[name]
            verdict = numerics_gate(labels, want, got, settings.gate)
            interval = paired_bootstrap_auc_difference(
                labels, want, got, settings.gate.bootstrap_rounds, seed=0
            )
            _, agreement = agreement_gate(want, got, settings.gate)
            figures[name] = {**agreement, "auc_difference": interval.mean,
                             "auc_difference_low": interval.low,
                             "auc_difference_high": interval.high}  # fmt: skip
        else:
            verdict, figures[name] = agreement_gate(want, got, settings.gate)
        if not verdict.passed:
            return Verdict(False, f"{name}: {verdict.reason}"), figures
        reasons.append(f"{name}: {verdict.reason.removeprefix('passes: ')}")
    return Verdict(True, "passes: " + "; ".join(reasons)), figures


@dataclass(frozen=True)
class Prepared:
    """The source with every node named, and the nodes each kind keeps float."""

    source: Path
    named: Path
    output_layers: tuple[str, ...]  # kept float in INT8 unless quantize_outputs
    output_path: tuple[str, ...]  # kept float in FP16
    has_tables: bool


def prepare(version: Path, work: Path, quantize_outputs: bool) -> Prepared:
    source = version / SOURCE
    named_file = named(source, work / "named.onnx")
    model = onnx.load(str(named_file))
    keep = () if quantize_outputs else tuple(output_layers(model))
    log.info("output layers kept float in INT8: %s", ", ".join(keep) or "none")
    path = tuple(n.name for n in output_path(model))
    return Prepared(source, named_file, keep, path, bool(embedding_tables(model)))


def _int8(kind: str, version: Path, prepared: Prepared, calibration: Outputs, work: Path,
          ) -> Candidate | None:  # fmt: skip
    tables = kind == "int8-tables"
    if tables and not prepared.has_tables:
        return None
    log.info("writing %s (ONNX Runtime, static QDQ, per-channel weights%s)", kind,
             ", embedding tables too" if tables else "")  # fmt: skip
    target = version / f"model.{kind}.onnx"
    quantize.quantize_onnxruntime_int8(
        prepared.named, target, calibration, quantize_gather=tables, keep_float_weights=(),
        keep_float_nodes=prepared.output_layers,
    )  # fmt: skip
    return Candidate(kind, target, "onnx", "int8", "cpu", ("onnxruntime",))


def _openvino_int8(kind: str, version: Path, prepared: Prepared, calibration: Outputs,
                   work: Path) -> Candidate:  # fmt: skip
    log.info("writing openvino-int8 (NNCF)")
    target = version / "model.openvino-int8.xml"
    quantize.convert_openvino(
        prepared.named, work / "float.xml", target, calibration, keep_float_weights=(),
        keep_float_nodes=prepared.output_layers,
    )  # fmt: skip
    return Candidate(kind, target, "openvino-ir", "int8", "cpu", ("openvino",))


def _openvino_fp16(kind: str, version: Path, prepared: Prepared, calibration: Outputs,
                   work: Path) -> Candidate:  # fmt: skip
    log.info("writing openvino-fp16 (IR with FP16 weights: half the embedding tables' size)")
    import openvino as ov

    target = version / "model.openvino-fp16.xml"
    ov.save_model(ov.convert_model(str(prepared.source)), str(target), compress_to_fp16=True)
    # Computed at FP32: OpenVINO keeps the weights in FP16 and widens them on every call, so
    # memory halves and latency grows (three times the source's at 256 rows here). At BF16 it
    # was as fast as the source at BF16 but its outputs collapsed (57 distinct scores of 2,997).
    return Candidate(kind, target, "openvino-ir", "fp16", "cpu", ("openvino",), "f32")


def _fp16(kind: str, version: Path, prepared: Prepared, calibration: Outputs, work: Path,
          ) -> Candidate:  # fmt: skip
    log.info("writing fp16 (for the CUDA provider)")
    target = version / "model.fp16.onnx"
    quantize.convert_float16(prepared.named, target, keep_float_nodes=prepared.output_path)
    return Candidate(kind, target, "onnx", "fp16", "gpu", ("onnxruntime",))


def _bf16(kind: str, version: Path, prepared: Prepared, calibration: Outputs, work: Path,
          ) -> Candidate | None:  # fmt: skip
    if not bf16_supported():
        log.info("bf16: this CPU does not execute BF16; not recorded")
        return None
    return Candidate(kind, prepared.source, "onnx", "bf16", "cpu", ("openvino",), "bf16")


# kind -> its builder: the variant written into the version folder (bf16: no file, the source
# run at BF16), or None where it does not apply (a model without tables; a CPU without BF16).
BUILDERS: dict[str, Callable[[str, Path, Prepared, Outputs, Path], Candidate | None]] = {
    "int8": _int8, "int8-tables": _int8, "openvino-int8": _openvino_int8,
    "openvino-fp16": _openvino_fp16, "fp16": _fp16, "bf16": _bf16,
}  # fmt: skip


def source_candidate(source: Path) -> Candidate:
    return Candidate("model", source, "onnx", "fp32", "cpu", ("onnxruntime", "openvino"))


def time_candidates(made: list[Candidate], inputs: Outputs, settings: BenchmarkSettings,
                    ) -> dict[str, dict[str, dict[str, float]]]:  # fmt: skip
    """Single-threaded median latency in ms of each CPU candidate, per runtime and batch rows
    (`inputs` repeated up to the largest batch), interleaved as `models.benchmark` times them."""
    largest = max(settings.batch_rows)
    repeat = -(-largest // len(next(iter(inputs.values()))))
    tiled = {k: np.concatenate([v] * repeat)[:largest] for k, v in inputs.items()}
    runners = [
        Runner(c.name, runtime, c.hint or c.precision, c.session(runtime, threads=1))
        for c in made if c.device == "cpu" for runtime in c.runtimes
    ]  # fmt: skip
    log.info("timing %d (variant, runtime) pairs at %s rows, single-threaded", len(runners),
             ", ".join(map(str, settings.batch_rows)))  # fmt: skip
    latency: dict[str, dict[str, dict[str, float]]] = {}
    for t in benchmark(runners, tiled, settings):
        cells = latency.setdefault(t.variant, {}).setdefault(t.runtime, {})
        cells[str(t.batch_rows)] = t.median_seconds * 1e3
    return latency


def candidates(version: Path, calibration: Rows, work: Path, quantize_outputs: bool,
               ) -> list[Candidate]:  # fmt: skip
    prepared = prepare(version, work, quantize_outputs)
    made = [source_candidate(prepared.source)]
    for kind, build in BUILDERS.items():
        candidate = build(kind, version, prepared, calibration.inputs, work)
        if candidate is not None:
            made.append(candidate)
    return made


def accelerate(version: Path, eval_file: Path, calibration_file: Path | None, settings: Settings,
               quantize_outputs: bool = False) -> AccelerationRecord:  # fmt: skip
    source = version / SOURCE
    if not source.is_file():
        present = [n for n in PLAIN_FILES if (version / n).is_file()]
        raise RepositoryError(
            f"{version}: accelerate needs a plain {SOURCE}"
            + (f" (it holds {present[0]})" if present else "")
        )
    signature: Signature = read_signature(source)
    if not signature.batched:
        raise RepositoryError(f"{source}: accelerate needs a batch axis (an open first dimension)")
    rows = read_rows(eval_file, signature)
    calibration = read_rows(calibration_file, signature) if calibration_file else rows
    log.info("%s: %d held-out rows (labels for %s), %d calibration rows", version, rows.count,
             ", ".join(rows.labels) or "no output", calibration.count)  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        made = candidates(version, calibration, Path(scratch), quantize_outputs)
        reference = run_rows(made[0].session("onnxruntime"), rows.inputs)
        timings = time_candidates(made, rows.inputs, settings.benchmark)
        recorded = []
        for candidate in made:
            runtime = "onnxruntime" if "onnxruntime" in candidate.runtimes else "openvino"
            outputs = (
                reference
                if candidate.name == "model"
                else run_rows(candidate.session(runtime), rows.inputs)
            )
            verdict, figures = gate_variant(reference, outputs, rows, settings)
            log.info("gate %s: %s", candidate.name, verdict.reason)
            latency = timings.get(candidate.name, {})
            ir = candidate.format == "openvino-ir"
            weights = candidate.file.with_suffix(".bin") if ir else None
            size = candidate.file.stat().st_size + (weights.stat().st_size if weights else 0)
            recorded.append(AcceleratedVariant(
                name=candidate.name,
                file=file_ref(version, candidate.file.name),
                weights_file=file_ref(version, weights.name) if weights else None,
                format=candidate.format,
                precision=candidate.precision,
                execution_hint=candidate.hint,
                device=candidate.device,
                runtimes=candidate.runtimes,
                size_bytes=size,
                servable=verdict.passed,
                gate=verdict.reason,
                outputs=figures,
                scored_with=f"{runtime}-cpu {candidate.hint or candidate.precision}",
                latency_ms=latency,
            ))  # fmt: skip
    defaults, reasons = {}, {}
    for backend, runtime in (("openvino-cpu", "openvino"), ("onnxruntime-cpu", "onnxruntime")):
        defaults[backend], reasons[backend] = fastest(recorded, runtime)
    fp16 = next(v for v in recorded if v.name == "fp16")
    defaults["onnxruntime-gpu"] = "fp16" if fp16.servable else "model"
    reasons["onnxruntime-gpu"] = (
        "fp16 passed the gate (scored on ONNX Runtime's CPU provider)" if fp16.servable
        else f"fp16 failed the gate ({fp16.gate}); the source runs"
    )  # fmt: skip
    record = AccelerationRecord(
        schema_version=1,
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        source=file_ref(version, SOURCE),
        parameters=graph_statistics(source).parameters,
        cpu=cpu_model(),
        eval_rows=RowsRef(
            file=rows_name(version, eval_file),
            rows=rows.count,
            labelled_outputs=tuple(rows.labels),
        ),
        calibration_rows=RowsRef(
            file=rows_name(version, calibration_file or eval_file), rows=calibration.count
        ),
        variants=tuple(recorded),
        default_variants=defaults,
        default_reasons=reasons,
    )
    write_record(version, record)
    (version / "report.md").write_text(render_report(version, record), encoding="utf-8")
    return record


def rows_name(version: Path, path: Path) -> str:
    """A rows file inside the version folder by its name (the folder may move), else its path."""
    return path.name if path.resolve().parent == version.resolve() else str(path)


def render_report(version: Path, record: AccelerationRecord) -> str:
    """The variants' table; after what `python -m models build --data` wrote, when it built it."""
    built = version / BUILD_REPORT
    preamble = built.read_text(encoding="utf-8") + "\n" if built.is_file() else ""
    sizes = sorted({int(r) for v in record.variants for t in v.latency_ms.values() for r in t})
    header = ["variant (runtime)", "precision", "size", "servable",
              *[f"batch {r} (ms)" for r in sizes], "gate"]  # fmt: skip
    parameters = f"{record.parameters:,} parameters, " if record.parameters is not None else ""
    lines = [
        f"{'##' if preamble else '#'} {version.parent.name} version {version.name}: accelerated "
        "variants",
        "",
        f"Source `{record.source.file}` ({parameters}SHA-256 {record.source.sha256[:12]}...). "
        "Gated on "
        f"{record.eval_rows.rows:,} held-out rows of `{record.eval_rows.file}` (labels for: "
        f"{', '.join(record.eval_rows.labelled_outputs) or 'none, agreement only'}); INT8 "
        f"calibrated on {record.calibration_rows.rows:,} rows. Latency: single-threaded median "
        f"per batch, on {record.cpu}, each runtime in its own row.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for v in record.variants:
        for runtime, cells in (v.latency_ms or {"GPU, not timed here": {}}).items():
            hint = v.execution_hint
            compute = "" if hint in (None, v.precision) else f" weights, {hint} compute"
            row = [
                f"{v.name} ({runtime})",
                v.precision + compute,
                f"{v.size_bytes / 1e6:.2f} MB",
                "yes" if v.servable else "**no**",
                *[f"{cells[str(r)]:.3f}" if str(r) in cells else "" for r in sizes],
                v.gate,
            ]
            lines.append("| " + " | ".join(row) + " |")  # fmt: skip
    lines += ["", "Served by default:", ""]
    lines += [f"- `{backend}`: **{name}**, {record.default_reasons.get(backend, '')}"
              for backend, name in record.default_variants.items()]  # fmt: skip
    return preamble + "\n".join(lines) + "\n"

"""Numerics-only variants of an exported float model (training side; needs onnx, nncf).

- INT8 for ONNX Runtime: static post-training quantization, QDQ format, per-channel int8 weights,
  int8 activations calibrated (min-max) on training rows; the embedding Gather quantized or not.
- OpenVINO IRs: the float IR, and NNCF's post-training INT8 quantization of it.
- FP16 for the CUDA execution provider, with float32 inputs and outputs at the boundary.
Two layers stay float in both INT8 variants (KEEP_FLOAT_WEIGHTS): the output layer, whose int8
output would quantize the logit and collapse scores into a few ties (the gate checks for it), and
the genre-bag projection, whose inputs are small fractions (1/2, 1/3, ...) that an int8 activation
scale rounds badly: quantized, it cost OpenVINO's INT8 model Spearman 0.9951 against float.

An INT8 model is built for the CPU it is built on (the server's own self-acceleration, or `python
-m models` on the serving host): on x86 without VNNI, ONNX Runtime multiplies 8-bit pairs into
16-bit sums that saturate with full-range weights, so there the weights get 7 bits
(`reduce_range`, as ONNX Runtime advises); with VNNI, 8. On a CPU without VNNI, full-range INT8
of the user-sized ranker scored Spearman 0.9969 against float, 7-bit weights 0.99898
(tests/models/test_quantize_cpu.py, a Haswell emulated).
"""

from __future__ import annotations

import contextlib
import io
import logging
import platform
import re
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from models.artifacts.acceleration_record import cpu_flags

log = logging.getLogger(__name__)
CALIBRATION_BATCH_ROWS = 256
KEEP_FLOAT_WEIGHTS = ("head.weight", "dense_projection.weight")

Inputs = dict[str, np.ndarray]


def _batches(inputs: Inputs, rows: int) -> Iterator[Inputs]:
    total = len(next(iter(inputs.values())))
    for start in range(0, total, rows):
        yield {name: array[start : start + rows] for name, array in inputs.items()}


# Instructions that sum 8-bit products into 32 bits without a saturating 16-bit step.
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
X86 = frozenset({"x86_64", "amd64", "i386", "i686"})


def saturates_int8_pairs(machine: str, flags: frozenset[str]) -> bool:
    """Pure: whether ONNX Runtime's INT8 products saturate on this CPU (x86 without VNNI)."""
    return machine.lower() in X86 and not flags & VNNI_FLAGS


def nodes_reading(path: Path, initializer: str) -> list[str]:
    """Names of the nodes that take `initializer` as an input."""
    return [n.name for n in onnx.load(str(path)).graph.node if initializer in n.input]


def quantize_onnxruntime_int8(
    source: Path,
    target: Path,
    calibration: Inputs,
    quantize_gather: bool,
    keep_float_weights: tuple[str, ...] = KEEP_FLOAT_WEIGHTS,
    keep_float_nodes: tuple[str, ...] = (),
    reduce_range: bool | None = None,
) -> None:
    """`reduce_range` None: 7-bit weights where this CPU's INT8 products saturate."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._batches = _batches(calibration, CALIBRATION_BATCH_ROWS)

        def get_next(self) -> Inputs | None:
            return next(self._batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        ops = ["Gemm", "MatMul", *(["Gather"] if quantize_gather else [])]
        excluded = [n for w in keep_float_weights for n in nodes_reading(prepared, w)]
        excluded += list(keep_float_nodes)
        if reduce_range is None:
            reduce_range = saturates_int8_pairs(platform.machine(), cpu_flags())
        log.info("INT8 weights: %s", "7-bit (this CPU has no VNNI)" if reduce_range else "8-bit")
        quantize_static(
            str(prepared),
            str(target),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=ops,
            nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod.MinMax,
            reduce_range=reduce_range,
        )


def convert_openvino(
    source: Path,
    float_target: Path,
    int8_target: Path,
    calibration: Inputs,
    keep_float_weights: tuple[str, ...] = KEEP_FLOAT_WEIGHTS,
    keep_float_nodes: tuple[str, ...] = (),
) -> None:
    """Float IR (weights kept FP32) and its NNCF INT8 quantization, calibrated row by row."""
    import nncf
    import openvino as ov

    # OpenVINO names the ops it converts after the ONNX nodes (a Gemm becomes ".../WithoutBiases").
    names = [n for w in keep_float_weights for n in nodes_reading(source, w)]
    names += list(keep_float_nodes)
    ignored = nncf.IgnoredScope(
        patterns=[f"^{re.escape(name)}(/.*)?$" for name in names], validate=False
    )

    model = ov.convert_model(str(source))
    ov.save_model(model, str(float_target), compress_to_fp16=False)
    samples = list(_batches(calibration, 1))
    nncf.set_log_level(logging.WARNING)
    # NNCF draws progress bars on stdout and warns about its own internals; keep the CLI's
    # output to the report.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        quantized = nncf.quantize(
            model,
            nncf.Dataset(samples),
            subset_size=len(samples),
            preset=nncf.QuantizationPreset.PERFORMANCE,
            ignored_scope=ignored,
        )
    ov.save_model(quantized, str(int8_target), compress_to_fp16=False)


def convert_float16(source: Path, target: Path, keep_float_nodes: tuple[str, ...] = ()) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(
        onnx.load(str(source)), keep_io_types=True, node_block_list=list(keep_float_nodes)
    )
    drop_float16_round_trips(model)
    onnx.save(model, str(target))


def drop_float16_round_trips(model: onnx.ModelProto) -> None:
    """Remove each Cast to FP16 whose only reader is a Cast back to FP32: the converter puts such
    pairs between the nodes it keeps in FP32, which would round their values through FP16."""
    graph = model.graph
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    drop, rename = [], {}
    for node in graph.node:
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if node.op_type != "Cast" or to != onnx.TensorProto.FLOAT16 or node.output[0] in outputs:
            continue
        after = readers.get(node.output[0], [])
        back = [r for r in after if r.op_type == "Cast" and any(
            a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in r.attribute)]  # fmt: skip
        if after and len(back) == len(after):
            drop += [node, *back]
            rename.update({r.output[0]: node.input[0] for r in back})
    for node in drop:
        graph.node.remove(node)
    for node in graph.node:
        for index, given in enumerate(node.input):
            name = given
            while name in rename:
                name = rename[name]
            node.input[index] = name
    for output in graph.output:
        if output.name in rename:  # a graph output must keep its name: rename its producer's
            for node in graph.node:
                node.output[:] = [output.name if o == rename[output.name] else o
                                  for o in node.output]  # fmt: skip

"""Plain ONNX models of the kind users bring, written with onnx's graph helpers (not by this
project's pipeline): their own tensor names, datatypes and outputs, no manifest. The tests serve
them from a plain repository; the multi-model benchmark serves the user-sized ranker.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def two_headed_ranker(path: Path, scale: float = 1.0, seed: int = 0) -> Path:
    """Inputs `ids` INT32 [-1, 4] and `features` FP16 [-1, 3]; outputs `ctr` FP32 [-1] and `cvr`
    FP16 [-1, 2]: sigmoid of a linear map of both (weights times `scale`: a second version of
    the model answers differently)."""
    weights = np.random.default_rng(seed).normal(0, 0.05, (7, 2)).astype(np.float32) * scale
    nodes = [
        helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["features"], ["features_f"], to=TensorProto.FLOAT),
        helper.make_node("Concat", ["ids_f", "features_f"], ["x"], axis=1),
        helper.make_node("MatMul", ["x", "w"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["probabilities"]),
        helper.make_node("Gather", ["probabilities", "zero"], ["ctr"], axis=1),
        helper.make_node("Cast", ["probabilities"], ["cvr"], to=TensorProto.FLOAT16),
    ]
    graph = helper.make_graph(
        nodes,
        "two_headed_ranker",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT32, ["batch", 4]),
            helper.make_tensor_value_info("features", TensorProto.FLOAT16, ["batch", 3]),
        ],
        [
            helper.make_tensor_value_info("ctr", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("cvr", TensorProto.FLOAT16, ["batch", 2]),
        ],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.array(0), "zero")],
    )
    return _save(graph, path)


def fixed_shape_model(path: Path) -> Path:
    """No batch axis: input `x` FP32 [2, 3], output `y` FP32 [2] (row sums of relu(x))."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("ReduceSum", ["r", "axes"], ["y"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "fixed_shape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")],
    )
    return _save(graph, path)


def user_sized_ranker(path: Path, vocabulary: int = 5000, seed: int = 0,
                      hidden: tuple[int, ...] = (256, 128)) -> Path:  # fmt: skip
    """A ranker of a user's size: `cat` INT64 [-1, 8] (ids below `vocabulary` per field) and
    `dense` FP32 [-1, 4] -> `score` FP32 [-1]; 8 embeddings of 16 and a 132-256-128-1 tower,
    about 0.7 million parameters (`hidden`: other tower widths)."""
    rng = np.random.default_rng(seed)
    fields, width = 8, 16
    tables = rng.normal(0, 0.05, (fields * vocabulary, width)).astype(np.float32)
    widths = [fields * width + 4, *hidden, 1]
    layers = list(itertools.pairwise(widths))
    initializers = [
        numpy_helper.from_array(tables, "embeddings"),
        numpy_helper.from_array((np.arange(fields) * vocabulary).astype(np.int64), "offsets"),
        numpy_helper.from_array(np.array([-1, fields * width], dtype=np.int64), "flat"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "rows"),
    ]
    nodes = [
        helper.make_node("Add", ["cat", "offsets"], ["shifted"]),
        helper.make_node("Gather", ["embeddings", "shifted"], ["embedded"], axis=0),
        helper.make_node("Reshape", ["embedded", "flat"], ["embedded_flat"]),
        helper.make_node("Concat", ["embedded_flat", "dense"], ["h0"], axis=1),
    ]
    for index, (fan_in, fan_out) in enumerate(layers):
        weight = rng.normal(0, (2 / fan_in) ** 0.5, (fan_in, fan_out)).astype(np.float32)
        initializers += [
            numpy_helper.from_array(weight, f"w{index}"),
            numpy_helper.from_array(np.zeros(fan_out, dtype=np.float32), f"b{index}"),
        ]
        nodes.append(helper.make_node("Gemm", [f"h{index}", f"w{index}", f"b{index}"],
                                      [f"z{index}"]))  # fmt: skip
        last = index == len(layers) - 1
        nodes.append(helper.make_node("Sigmoid" if last else "Relu", [f"z{index}"],
                                      [f"h{index + 1}"]))  # fmt: skip
    nodes.append(helper.make_node("Reshape", [f"h{len(layers)}", "rows"], ["score"]))
    graph = helper.make_graph(
        nodes,
        "user_sized_ranker",
        [
            helper.make_tensor_value_info("cat", TensorProto.INT64, ["batch", fields]),
            helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["batch", 4]),
        ],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        initializers,
    )
    return _save(graph, path)


def to_openvino_ir(onnx_path: Path, xml_path: Path) -> Path:
    """The same model as OpenVINO IR (`.xml` + `.bin`), as a user's OpenVINO export would be."""
    import openvino as ov

    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)
    return xml_path

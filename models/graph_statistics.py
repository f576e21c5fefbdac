"""What an ONNX graph holds: its weights and the FLOPs per row of its matrix products (onnx and
numpy only: `accelerate` and the build both count with it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

# Initializer types that hold weights; int64 initializers are offsets and shapes, not parameters.
WEIGHT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
WEIGHT_TYPES |= {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}


@dataclass(frozen=True)
class GraphStatistics:
    parameters: int
    flops_per_row: int


def graph_statistics(path: Path) -> GraphStatistics:
    """Weights in the graph, and FLOPs per row of its matrix products (2 x multiply-adds).

    Element-wise work (bias adds, activations, the cross layers' products) is a few per cent on top
    and is not counted; nor are gathers.
    """
    graph = onnx.load(str(path)).graph
    initializers = {init.name: init for init in graph.initializer}
    parameters = sum(
        int(np.prod(init.dims)) for init in initializers.values() if init.data_type in WEIGHT_TYPES
    )
    flops = 0
    for node in graph.node:
        if node.op_type not in {"MatMul", "Gemm"}:
            continue
        weight = next((initializers[n] for n in node.input[1:2] if n in initializers), None)
        if weight is not None and len(weight.dims) == 2:
            flops += 2 * int(weight.dims[0]) * int(weight.dims[1])
    return GraphStatistics(parameters=parameters, flops_per_row=flops)

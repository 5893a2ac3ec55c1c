"""Multiply-accumulates per frame of an exported detector, counted from its ONNX graph as it actually runs.

Why by hand: general ONNX profilers infer shapes statically, and a Faster R-CNN's second stage has data-dependent
shapes (the number of proposals after NMS, the detections after the box head) that static inference leaves
unknown. Here every MAC-carrying node's tensors are exposed as extra graph outputs, the graph is run once in
onnxruntime on a real preprocessed frame, and MACs are computed from the shapes that really occurred:

* ``Conv`` / ``ConvInteger`` / ``QLinearConv``: output elements x (input channels / groups) x kernel area
* ``ConvTranspose``: input elements x (output channels / groups) x kernel area
* ``MatMul`` / ``MatMulInteger`` / ``QLinearMatMul`` / ``Gemm``: output elements x the reduced dimension

Everything else (activations, pooling, RoIAlign, NMS) is a rounding error next to these for this model family.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

CONV_OPS = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3)}  # op -> (input idx, weight idx)
MATMUL_OPS = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3), "Gemm": (0, 1)}
TRANSPOSED_CONV_OPS = {"ConvTranspose": (0, 1)}


@dataclass(frozen=True)
class MacCount:
    total: int
    by_op: dict[str, int]
    nodes: int

    @property
    def gmacs(self) -> float:
        return self.total / 1e9


def count_macs(onnx_path: Path, feeds: dict[str, np.ndarray]) -> MacCount:
    """Run ``onnx_path`` once on ``feeds`` with its MAC-carrying tensors exposed, and add up their MACs."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    graph = model.graph
    wanted = {**CONV_OPS, **MATMUL_OPS, **TRANSPOSED_CONV_OPS}
    nodes = [n for n in graph.node if n.op_type in wanted]
    initializers = {init.name: tuple(init.dims) for init in graph.initializer}
    existing = {o.name for o in graph.output}
    exposed: list[str] = []
    for node in nodes:
        for name in (*node.input, *node.output):
            if name and name not in initializers and name not in existing and name not in exposed:
                exposed.append(name)
    for name in exposed:
        graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    # Keep the graph as written: fusions would rename or remove the tensors exposed above.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(names, feeds), strict=True))
    shapes = {name: tuple(v.shape) for name, v in values.items()}
    shapes.update(initializers)
    shapes.update({k: tuple(v.shape) for k, v in feeds.items()})

    total = 0
    by_op: dict[str, int] = {}
    for node in nodes:
        macs = _node_macs(node, shapes, wanted[node.op_type])
        if macs is None:
            logger.debug("no shape for %s %s; not counted", node.op_type, node.name)
            continue
        total += macs
        by_op[node.op_type] = by_op.get(node.op_type, 0) + macs
    return MacCount(total=total, by_op=by_op, nodes=len(nodes))


def _node_macs(node: object, shapes: dict[str, tuple[int, ...]], io: tuple[int, int]) -> int | None:
    x_idx, w_idx = io
    inputs = list(node.input)
    x_shape = shapes.get(inputs[x_idx])
    w_shape = shapes.get(inputs[w_idx]) if len(inputs) > w_idx else None
    out_shape = shapes.get(node.output[0])
    if x_shape is None or w_shape is None or out_shape is None:
        return None
    attrs = {a.name: a for a in node.attribute}
    op = node.op_type
    if op in CONV_OPS:
        groups = attrs["group"].i if "group" in attrs else 1
        kernel = int(np.prod(w_shape[2:]))
        return int(np.prod(out_shape)) * (x_shape[1] // groups) * kernel
    if op in TRANSPOSED_CONV_OPS:
        groups = attrs["group"].i if "group" in attrs else 1
        kernel = int(np.prod(w_shape[2:]))
        return int(np.prod(x_shape)) * (w_shape[1]) * kernel // max(1, groups) * groups
    if op == "Gemm":
        trans_a = attrs["transA"].i if "transA" in attrs else 0
        reduced = x_shape[0] if trans_a else x_shape[-1]
        return int(np.prod(out_shape)) * reduced
    return int(np.prod(out_shape)) * x_shape[-1]

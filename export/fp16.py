"""The fp16 variant: the fp32 ONNX with its dense layers (convolutions, the box head's matrix products and the
element-wise ops between them) in half precision, for TensorRT fp16 engines and GPU onnxruntime.

Why not the whole graph: the detection tail (anchor decoding, box clipping, NMS, RoIAlign, TopK, score sigmoid)
works on pixel coordinates up to 1024 and on exponentials of box deltas, where fp16's 11-bit mantissa costs half a
pixel and overflows; TensorRT would keep those layers in fp32 anyway. The input and outputs stay float32, so the
agent's pre- and post-processing are the same for every variant. Conversion is onnxruntime's own
``float16.convert_float_to_float16`` (casts inserted at every fp16/fp32 boundary); this module only picks the ops.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter
from pathlib import Path

from export.onnx_export import ExportError, check_onnx
from export.profile import subgraph_nodes

logger = logging.getLogger(__name__)

FP16_VARIANT = "fp16"
# The op types computed in fp16: where the MACs are, and the cheap ops between them that would otherwise force a
# cast on every edge. Everything else keeps fp32.
FP16_OPS = frozenset(
    {"Conv", "Relu", "Clip", "Add", "Resize", "MaxPool", "Gemm", "MatMul", "Flatten", "BatchNormalization", "Pad"}
)

# Module scopes (torch.onnx node names) of the layers that carry the MACs: backbone, FPN, RPN head, box head.
FP16_SCOPES = ("/backbone/", "/rpn/head/", "/roi_heads/box_head/")


def convert_fp16(fp32_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Write the fp16 variant of ``fp32_path`` to ``out_path`` (atomically, checker-clean); returns the path."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    check_onnx(fp32_path)
    model = onnx.load(str(fp32_path))
    kept_fp32 = sorted({node.op_type for node in model.graph.node} - FP16_OPS)
    # By scope as well as by op type: the RPN and RoI tails share op types with the dense layers (Add, Clip,
    # Reshape) but feed the NMS branches, whose subgraphs must see the fp32 tensors they were typed with.
    outside = [node.name for node in model.graph.node if not node.name.startswith(FP16_SCOPES)]
    # Nodes inside If/Loop branches (the empty-detections path) stay fp32 whatever their op type: their outputs
    # must keep the types the parent node declares.
    branches = [node.name for node in subgraph_nodes(model.graph)]
    try:
        converted = convert_float_to_float16(
            model, keep_io_types=True, op_block_list=kept_fp32, node_block_list=outside + branches
        )
        _fp32_into_subgraphs(converted.graph)
        # The converter appends its input casts at the end of the node list; ONNX wants topological order.
        OnnxModel(converted).topological_sort()
    except Exception as exc:  # noqa: BLE001  the converter raises bare exceptions on graphs it cannot type
        raise ExportError(f"fp16 conversion of {fp32_path} failed: {exc}") from exc
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", dir=out_path.parent)
    os.close(fd)
    try:
        onnx.save(converted, tmp)
        check_onnx(Path(tmp), source=str(out_path))
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    counts = half_precision_ops(out_path)
    logger.info(
        "wrote fp16 model %s (%.1f MB; %d of %d compute nodes in fp16; kept fp32: %s)",
        out_path,
        out_path.stat().st_size / 1e6,
        counts["fp16"],
        counts["fp16"] + counts["fp32"],
        ", ".join(kept_fp32),
    )
    return out_path


def _fp32_into_subgraphs(graph) -> None:  # type: ignore[no-untyped-def]
    """Point If/Loop branches back at the fp32 tensors they read from the outer graph.

    The converter casts a tensor to fp16 for its fp16 consumers by renaming: the cast's output takes the tensor's
    old name, so a branch that reads that name from the enclosing scope (branches list no inputs) silently gets the
    fp16 copy and fails type inference."""
    cast_from = {
        node.output[0]: node.input[0]
        for node in graph.node
        if node.op_type == "Cast" and node.name.endswith("_cast_to_fp16_node")
    }
    for node in subgraph_nodes(graph):
        for index, name in enumerate(node.input):
            if name in cast_from:
                node.input[index] = cast_from[name]


def half_precision_ops(path: str | os.PathLike) -> Counter[str]:
    """How many Conv / Gemm / MatMul nodes of ``path`` take fp16 weights (``fp16``) or fp32 ones (``fp32``)."""
    import onnx

    model = onnx.load(str(path))
    dtypes = {init.name: init.data_type for init in model.graph.initializer}
    counts: Counter[str] = Counter(fp16=0, fp32=0)
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in dtypes:
            half = dtypes[node.input[1]] == onnx.TensorProto.FLOAT16
            counts["fp16" if half else "fp32"] += 1
    return counts

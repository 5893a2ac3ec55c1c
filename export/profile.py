"""Where an ONNX model's CPU time goes, and which convolutions really run on integer kernels.

Two questions the export report answers for every variant, because a QDQ file says nothing about what onnxruntime
does with it: (1) ``optimized_op_counts`` — the op types of the graph onnxruntime actually executes (its optimized
graph, saved by the session itself), so ``QLinearConv`` / ``ConvInteger`` can be counted against convolutions that
stayed float (``Conv``, ``FusedConv``, NCHWc ``Conv``); (2) ``op_time_profile`` — onnxruntime's own profiler,
kernel time summed per op type and divided by the number of runs.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_agent.preprocess import INPUT_NAME

logger = logging.getLogger(__name__)

INTEGER_CONV_OPS = ("QLinearConv", "ConvInteger")
INTEGER_MATMUL_OPS = ("QLinearMatMul", "MatMulInteger", "QGemm")
FLOAT_CONV_OPS = ("Conv", "FusedConv")


def _session_options(threads: int):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


def optimized_op_counts(model_path: str | os.PathLike, threads: int = 1) -> Counter[str]:
    """Op types (``domain:op`` outside the default domain) of the graph onnxruntime runs for ``model_path`` on the
    CPU at its default optimization level — what the session executes, not what the file says."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="starfish-ortopt-") as tmp:
        options = _session_options(threads)
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    counts: Counter[str] = Counter()
    for node in all_nodes(graph):
        counts[node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}"] += 1
    return counts


def subgraph_nodes(graph):  # type: ignore[no-untyped-def]
    """Every node inside the graph's If/Loop branches, at any depth (torchvision's NMS sits inside an If)."""
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield from sub.node
                yield from subgraph_nodes(sub)


def all_nodes(graph):  # type: ignore[no-untyped-def]
    """The graph's own nodes, then those of its branches."""
    yield from graph.node
    yield from subgraph_nodes(graph)


def conv_kernels(counts: Counter[str]) -> dict[str, int]:
    """Convolutions on integer kernels vs convolutions left in float, from `optimized_op_counts`."""
    integer = sum(n for op, n in counts.items() if op.split(":")[-1] in INTEGER_CONV_OPS)
    floating = sum(n for op, n in counts.items() if op.split(":")[-1] in FLOAT_CONV_OPS)
    matmul_int = sum(n for op, n in counts.items() if op.split(":")[-1] in INTEGER_MATMUL_OPS)
    return {"integer_conv": integer, "float_conv": floating, "integer_matmul": matmul_int}


def op_time_profile(model_path: str | os.PathLike, frames: Sequence[np.ndarray], threads: int) -> dict[str, float]:
    """Milliseconds per frame spent in each op type (onnxruntime's profiler, kernel time only), largest first.

    The first frame is a warm-up and is not counted."""
    import onnxruntime as ort

    if len(frames) < 2:
        raise ValueError("op profiling needs at least two frames (one is a warm-up)")
    with tempfile.TemporaryDirectory(prefix="starfish-ortprof-") as tmp:
        options = _session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        session.run(None, {INPUT_NAME: frames[0]})
        warmup_end_us = None
        for frame in frames[1:]:
            session.run(None, {INPUT_NAME: frame})
        profile_path = session.end_profiling()
        events = json.loads(Path(profile_path).read_text())
    # Session-level "model_run" events mark each run; kernels of the warm-up run come before the second one.
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    if len(runs) >= 2:
        warmup_end_us = runs[1]
    per_op: Counter[str] = Counter()
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        if warmup_end_us is not None and event["ts"] < warmup_end_us:
            continue
        per_op[event.get("args", {}).get("op_name", "?")] += event["dur"]
    timed = len(frames) - 1
    return {op: us / 1000.0 / timed for op, us in per_op.most_common()}

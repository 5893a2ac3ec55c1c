"""Run the same letterboxed tensor through PyTorch or onnxruntime and get numpy (boxes, scores, labels) back.

One interface for parity checks, accuracy evaluation and latency measurement, so every variant is measured the
same way (same input size, same threads, same pre-processing).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge_agent.preprocess import INPUT_NAME, OUTPUT_NAMES

Detections = tuple[np.ndarray, np.ndarray, np.ndarray]
Runner = Callable[[np.ndarray], Detections]

DEFAULT_THREADS = 2


def torch_runner(model, width: int, height: int, threads: int = DEFAULT_THREADS) -> Runner:  # type: ignore[no-untyped-def]
    """Eager PyTorch fp32 on CPU through the same contract wrapper that is exported (no in-model resize)."""
    import torch

    from export.onnx_export import ContractDetector

    torch.set_num_threads(threads)
    wrapper = ContractDetector(model.eval().cpu(), width, height).eval()

    def run(tensor: np.ndarray) -> Detections:
        with torch.inference_mode():
            boxes, scores, labels = wrapper(torch.from_numpy(tensor))
        return boxes.numpy(), scores.numpy(), labels.numpy()

    return run


def onnx_runner(path: str | os.PathLike, threads: int = DEFAULT_THREADS) -> Runner:
    """onnxruntime CPU session with ``threads`` intra-op threads (graph optimisations on, as deployed)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # onnxruntime's pool threads spin-wait after each run by default; on a 2-core machine they then steal the CPU
    # from whatever runs next (the PyTorch baseline in an interleaved benchmark, the tracker on a device).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(Path(path)), options, providers=["CPUExecutionProvider"])

    def run(tensor: np.ndarray) -> Detections:
        boxes, scores, labels = session.run(list(OUTPUT_NAMES), {INPUT_NAME: tensor})
        return boxes, scores, labels

    return run

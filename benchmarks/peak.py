"""The machine's own arithmetic peak, measured once per run with large matrix products.

A model's achieved GFLOPS only means something next to what the same machine can do at best, with the same thread
count: ``cpu_fp32`` is a numpy (BLAS) float32 matmul, ``cpu_int8`` an onnxruntime ``MatMulInteger`` (the same
kernels library the int8 back end uses), and on a CUDA GPU ``gpu_fp32`` (TF32 off, so it is real fp32),
``gpu_fp16`` and ``gpu_int8`` (``torch._int_mm``) from torch, timed with CUDA events. Values are in GFLOPS (GOPS
for int8), counting a multiply-accumulate as two operations, and are the best of a few repeats.

Run in its own process (``python -m benchmarks.peak --threads N``) so BLAS thread counts are set before numpy loads
and so torch's memory never lands in a benchmarked process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable

import numpy as np

logger = logging.getLogger(__name__)

CPU_SIZE = 2048
GPU_SIZE = 8192
TRIES = 5


def _best_gflops(run: Callable[[], object], flops: float, tries: int = TRIES) -> float:
    run()  # warm-up: thread pools start, pages fault in, kernels are chosen
    best = float("inf")
    for _ in range(tries):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


def cpu_fp32(size: int = CPU_SIZE) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    return _best_gflops(lambda: a @ b, 2.0 * size**3)


def cpu_int8(threads: int, size: int = CPU_SIZE) -> float:
    """uint8 x int8 -> int32 ``MatMulInteger`` in onnxruntime (needs the onnx package to build the graph)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["c"])],
        "peak_int8",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [size, size])],
        [helper.make_tensor_value_info("c", TensorProto.INT32, [size, size])],
        initializer=[
            helper.make_tensor(
                "b",
                TensorProto.INT8,
                [size, size],
                np.random.default_rng(1).integers(-127, 127, (size, size), dtype=np.int8).tobytes(),
                raw=True,
            )
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 8)  # older onnxruntime builds on Jetsons read IR <= 8
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    a = np.random.default_rng(2).integers(0, 255, (size, size), dtype=np.uint8)
    return _best_gflops(lambda: session.run(None, {"a": a}), 2.0 * size**3)


def gpu_peaks(size: int = GPU_SIZE) -> tuple[dict[str, float], dict[str, str]]:
    """fp32 / fp16 / int8 matmul on CUDA via torch, timed with CUDA events."""
    import torch

    if not torch.cuda.is_available():
        return {}, {key: "no CUDA device visible to torch" for key in ("gpu_fp32", "gpu_fp16", "gpu_int8")}
    torch.backends.cuda.matmul.allow_tf32 = False  # measure real fp32, not TF32
    values: dict[str, float] = {}
    missing: dict[str, str] = {}
    device = torch.device("cuda")

    def timed(fn: Callable[[], object], flops: float) -> float:
        fn()
        torch.cuda.synchronize()
        best = float("inf")
        for _ in range(TRIES):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / 1000.0)
        return flops / best / 1e9

    flops = 2.0 * size**3
    for key, dtype in (("gpu_fp32", torch.float32), ("gpu_fp16", torch.float16)):
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        values[key] = timed(lambda a=a, b=b: a @ b, flops)
        del a, b
    try:
        a8 = torch.randint(-127, 127, (size, size), device=device, dtype=torch.int8)
        b8 = torch.randint(-127, 127, (size, size), device=device, dtype=torch.int8)
        values["gpu_int8"] = timed(lambda: torch._int_mm(a8, b8), flops)
    except (RuntimeError, AttributeError) as exc:  # _int_mm needs sm_75+ and a recent torch
        missing["gpu_int8"] = f"torch._int_mm unavailable: {exc}"
    torch.cuda.empty_cache()
    return values, missing


def measure(threads: int, gpu: bool = True) -> dict[str, dict]:
    """Measure every peak this machine can run; anything that cannot run is listed with its reason."""
    values: dict[str, float] = {}
    method: dict[str, str] = {}
    unavailable: dict[str, str] = {}
    values["cpu_fp32"] = cpu_fp32()
    method["cpu_fp32"] = f"numpy float32 matmul {CPU_SIZE}^3, {threads} BLAS threads, best of {TRIES}"
    try:
        values["cpu_int8"] = cpu_int8(threads)
        method["cpu_int8"] = f"onnxruntime MatMulInteger u8xs8 {CPU_SIZE}^3, {threads} threads, best of {TRIES}"
    except ImportError as exc:
        unavailable["cpu_int8"] = f"needs onnx and onnxruntime: {exc}"
    if gpu:
        try:
            gpu_values, gpu_missing = gpu_peaks()
        except ImportError:
            gpu_values, gpu_missing = {}, {"gpu": "torch not installed"}
        values.update(gpu_values)
        unavailable.update(gpu_missing)
        for key in gpu_values:
            precision = key.split("_")[1]
            method[key] = f"torch CUDA matmul {GPU_SIZE}^3 ({precision}, TF32 off), CUDA events, best of {TRIES}"
    return {"values_gflops": {k: round(v, 2) for k, v in values.items()}, "method": method, "unavailable": unavailable}


def thread_env(threads: int) -> dict[str, str]:
    """Environment that pins every BLAS / OpenMP pool a child process may load to ``threads``."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[var] = str(threads)
    # Idle OpenMP threads sleep instead of spinning: on a machine shared with other work, spinning threads fight
    # for the cores and PyTorch's latency explodes (seconds instead of ms). A dedicated machine may set ACTIVE.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--no-gpu", action="store_true")
    args = parser.parse_args(argv)
    json.dump(measure(args.threads, gpu=not args.no_gpu), sys.stdout)


if __name__ == "__main__":
    main()

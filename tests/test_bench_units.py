"""Pieces of the benchmark harness that carry its honesty: the timing loop, the MAC counter, the tolerance parser,
the default-command spelling and the worker's memory accounting."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from benchmarks.backends import parse_backends
from benchmarks.compare import parse_tolerance
from benchmarks.frames import evenly_spaced
from benchmarks.timing import latency_stats, summarise, throughput, time_repeats


def test_timing_rotates_inputs_and_excludes_warmup() -> None:
    seen: list[int] = []
    stats = time_repeats(seen.append, list(range(5)), warmup=3, iterations=4, repeats=2)
    assert len(seen) == 3 + 4 * 2
    assert seen == [i % 5 for i in range(11)]  # every call gets the next frame: never one cached input
    assert all(a != b for a, b in zip(seen, seen[1:], strict=False))
    assert len(stats) == 2


def test_timing_warms_up_for_a_minimum_time() -> None:
    seen: list[int] = []
    time_repeats(seen.append, [0, 1], warmup=0, iterations=1, repeats=1, min_warmup_s=0.05)
    assert len(seen) > 10  # a no-op call repeats many times within 50 ms


def test_statistics_are_medians_over_repeats_with_spread() -> None:
    first = summarise(np.array([10.0] * 98 + [50.0, 100.0]), loop_s=1.0, frames=100)
    assert first.p50_ms == 10.0 and first.p99_ms == pytest.approx(50.5) and first.fps == 100.0
    repeats = [first, summarise(np.full(100, 20.0), 2.0, 100), summarise(np.full(100, 30.0), 4.0, 100)]
    stats = latency_stats(repeats, samples=100)
    assert (stats.p50_ms, stats.p50_min_ms, stats.p50_max_ms, stats.repeats) == (20.0, 10.0, 30.0, 3)
    fps = throughput(repeats, batch=1)
    assert (fps.fps, fps.fps_min, fps.fps_max) == (50.0, 25.0, 100.0)


def test_mac_count_matches_hand_computation(tmp_path) -> None:  # noqa: ANN001
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    from benchmarks.macs import count_macs

    rng = np.random.default_rng(0)
    conv_w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    dw_w = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)  # depthwise: groups = channels
    gemm_w = rng.standard_normal((10, 8 * 16 * 16)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "conv_w"], ["c1"], pads=[1, 1, 1, 1]),
            helper.make_node("Conv", ["c1", "dw_w"], ["c2"], pads=[1, 1, 1, 1], group=8),
            helper.make_node("Flatten", ["c2"], ["f"]),
            helper.make_node("Gemm", ["f", "gemm_w"], ["y"], transB=1),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        initializer=[
            numpy_helper.from_array(conv_w, "conv_w"),
            numpy_helper.from_array(dw_w, "dw_w"),
            numpy_helper.from_array(gemm_w, "gemm_w"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    count = count_macs(path, {"x": rng.random((1, 3, 16, 16), dtype=np.float32)})
    conv = 8 * 16 * 16 * 3 * 9
    depthwise = 8 * 16 * 16 * 1 * 9
    gemm = 10 * 8 * 16 * 16
    assert count.by_op == {"Conv": conv + depthwise, "Gemm": gemm}
    assert count.total == conv + depthwise + gemm and count.nodes == 3


@pytest.mark.parametrize(("text", "value"), [("10%", 0.1), ("0.25", 0.25), (" 5 %", 0.05), ("0", 0.0)])
def test_tolerance_parsing(text: str, value: float) -> None:
    assert parse_tolerance(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["ten", "-5%", "nan", ""])
def test_bad_tolerance_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="tolerance"):
        parse_tolerance(text)


def test_backend_names() -> None:
    assert parse_backends("all") == [
        "torch-cpu",
        "ort-cpu",
        "ort-cpu-int8",
        "ort-cpu-int8-u8",
        "torch-cuda",
        "ort-cuda",
        "ort-tensorrt",
        "tensorrt-fp16",
        "tensorrt-int8",
    ]
    assert parse_backends("ort-cpu, ort-cpu,torch-cpu") == ["ort-cpu", "torch-cpu"]
    with pytest.raises(ValueError, match="known: torch-cpu"):
        parse_backends("ort-gpu")


def test_frames_are_picked_evenly_and_deterministically() -> None:
    assert evenly_spaced(3, 9) == [0, 4, 8]
    assert evenly_spaced(0, 4) == [0, 1, 2, 3] and evenly_spaced(10, 4) == [0, 1, 2, 3]
    assert evenly_spaced(5, 0) == []


def test_worker_peak_rss_is_its_own_not_the_parents() -> None:
    """A forked worker must not inherit the parent's memory high-water mark (Linux keeps ru_maxrss over exec)."""
    ballast = np.ones(300 * 2**20 // 8)  # 300 MB resident in this (parent) process
    ballast[::512] = 2.0
    code = "from benchmarks.memory import peak_rss_mb; print(peak_rss_mb())"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert float(child.stdout) < 250, child.stdout
    del ballast


@pytest.mark.parametrize(
    ("metric", "base", "new", "shown", "verdict"),
    [
        ("fps", 10.0, 12.0, "+20.0%", "improved"),  # higher is better, went up
        ("fps", 10.0, 8.0, "-20.0%", "regression"),  # higher is better, went down
        ("p50_ms", 100.0, 80.0, "-20.0%", "improved"),  # lower is better, went down
        ("f2", 0.80, 0.85, "+0.050", "improved"),  # accuracy: absolute change
        ("map_50", 0.90, 0.85, "-0.050", "regression"),
    ],
)
def test_compare_shows_the_change_signed_like_the_values(
    metric: str, base: float, new: float, shown: str, verdict: str
) -> None:
    from benchmarks.compare import ABSOLUTE_METRICS, METRICS, _compare_metric

    row = _compare_metric("ort-cpu", METRICS[metric], base, new, 0.02 if metric in ABSOLUTE_METRICS else 0.1)
    assert row.verdict == verdict
    assert row.delta is not None
    assert (f"{row.delta:+.3f}" if metric in ABSOLUTE_METRICS else f"{row.delta:+.1%}") == shown

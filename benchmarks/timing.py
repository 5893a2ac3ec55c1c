"""Honest timing loops: warm-up excluded, real frames rotated, repeats summarised by medians with their spread.

The callable under test must return only once its work is finished: back ends that run on a GPU copy their outputs
to the host (or synchronise) before returning, so the clock never stops on queued work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from benchmarks.schema import LatencyStats, Throughput

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RepeatStats:
    """One timed repeat: latency percentiles and the loop's own frames per second."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    fps: float


def time_repeats(
    call: Callable[[object], object],
    inputs: Sequence[object],
    *,
    warmup: int,
    iterations: int,
    repeats: int,
    min_warmup_s: float = 0.0,
    frames_per_call: int = 1,
    on_step: Callable[[], None] | None = None,
) -> list[RepeatStats]:
    """Call ``call(inputs[i % len(inputs)])`` untimed ``warmup`` times and for at least ``min_warmup_s`` seconds,
    then ``repeats`` x ``iterations`` timed.

    Warm-up is by count *and* time because some runtimes (PyTorch on CPU notably) take a few seconds of calls, not
    a fixed number, before their allocator and kernel caches settle.

    The input index keeps advancing across warm-up and repeats, so consecutive calls never see the same frame
    (unless the pool has a single frame) and caches keyed on the input cannot flatter the numbers.
    """
    if not inputs:
        raise ValueError("no inputs to time")
    if iterations < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"need iterations >= 1, repeats >= 1, warmup >= 0; got {iterations}, {repeats}, {warmup}")
    index = 0
    warm_start = time.perf_counter()
    while index < warmup or time.perf_counter() - warm_start < min_warmup_s:
        call(inputs[index % len(inputs)])
        index += 1
        if on_step and index <= warmup:
            on_step()
    stats: list[RepeatStats] = []
    for _ in range(repeats):
        latencies = np.empty(iterations, dtype=np.float64)
        loop_start = time.perf_counter()
        for i in range(iterations):
            item = inputs[index % len(inputs)]
            index += 1
            start = time.perf_counter()
            call(item)
            latencies[i] = time.perf_counter() - start
            if on_step:
                on_step()
        loop_s = time.perf_counter() - loop_start
        stats.append(summarise(latencies * 1000.0, loop_s, iterations * frames_per_call))
    return stats


def summarise(latencies_ms: np.ndarray, loop_s: float, frames: int) -> RepeatStats:
    p50, p90, p99 = np.percentile(latencies_ms, [50, 90, 99])
    return RepeatStats(
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        mean_ms=float(latencies_ms.mean()),
        fps=frames / loop_s if loop_s > 0 else float("inf"),
    )


def latency_stats(repeats: Sequence[RepeatStats], samples: int) -> LatencyStats:
    p50s = [r.p50_ms for r in repeats]
    return LatencyStats(
        p50_ms=float(np.median(p50s)),
        p90_ms=float(np.median([r.p90_ms for r in repeats])),
        p99_ms=float(np.median([r.p99_ms for r in repeats])),
        mean_ms=float(np.median([r.mean_ms for r in repeats])),
        p50_min_ms=float(min(p50s)),
        p50_max_ms=float(max(p50s)),
        samples=samples,
        repeats=len(repeats),
    )


def throughput(repeats: Sequence[RepeatStats], batch: int) -> Throughput:
    fps = [r.fps for r in repeats]
    return Throughput(batch=batch, fps=float(np.median(fps)), fps_min=float(min(fps)), fps_max=float(max(fps)))

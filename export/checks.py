"""Parity (ONNX vs PyTorch), accuracy (F2, mAP@0.5 on held-out frames) and CPU latency of a runner."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from edge_agent import metrics
from edge_agent.preprocess import boxes_to_source, letterbox
from export.runners import Runner

logger = logging.getLogger(__name__)


@dataclass
class ParityResult:
    frames: int
    reference_detections: int
    matched: int
    min_iou: float
    max_score_diff: float
    passed: bool
    problems: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return metrics.box_iou(a.reshape(-1, 4), b.reshape(-1, 4))


def check_parity(
    reference: Runner,
    candidate: Runner,
    tensors: Sequence[np.ndarray],
    *,
    min_iou: float = 0.99,
    max_score_diff: float = 1e-3,
    score_floor: float = 0.0,
    max_detections: int | None = None,
) -> ParityResult:
    """Every reference detection (score > ``score_floor``) must have a same-label candidate detection with IoU >=
    ``min_iou`` and |Δscore| <= ``max_score_diff``, and vice versa. Detections whose score sits within
    ``max_score_diff`` of a cut-off (the floor, or the lowest score kept when the per-image cap is full) may
    legitimately appear on one side only and are not counted as mismatches."""
    problems: list[str] = []
    total = matched = 0
    worst_iou, worst_diff = 1.0, 0.0
    for index, tensor in enumerate(tensors):
        ref, cand = reference(tensor), candidate(tensor)
        for a, b, name in ((ref, cand, "reference"), (cand, ref, "candidate")):
            boxes_a, scores_a, labels_a = a
            boxes_b, scores_b, labels_b = b
            cutoff = score_floor
            if max_detections is not None and max(len(scores_a), len(scores_b)) >= max_detections:
                # The per-image cap is full: which of the near-lowest-scored boxes survive is a coin toss.
                cutoff = max(cutoff, float(min(scores_a.min(initial=1.0), scores_b.min(initial=1.0))))
            ious = _iou(boxes_a, boxes_b) if len(boxes_a) and len(boxes_b) else np.zeros((len(boxes_a), 0))
            for i in range(len(boxes_a)):
                if scores_a[i] <= cutoff + max_score_diff:
                    continue
                same = labels_b == labels_a[i]
                candidates = np.where(same)[0]
                if name == "reference":
                    total += 1
                if len(candidates) == 0:
                    problems.append(f"frame {index}: {name} detection {i} (score {scores_a[i]:.4f}) has no match")
                    continue
                best = candidates[np.argmax(ious[i, candidates])]
                iou, diff = float(ious[i, best]), float(abs(scores_a[i] - scores_b[best]))
                worst_iou, worst_diff = min(worst_iou, iou), max(worst_diff, diff)
                if iou < min_iou or diff > max_score_diff:
                    problems.append(f"frame {index}: {name} detection {i}: IoU {iou:.4f}, |Δscore| {diff:.2e}")
                elif name == "reference":
                    matched += 1
    result = ParityResult(len(tensors), total, matched, worst_iou, worst_diff, not problems, problems[:20])
    # 0/0 is not a pass: nothing was compared (an untrained model scores every box below the cut-offs).
    verdict = "NOT TESTED" if total == 0 else ("PASS" if result.passed else "FAIL")
    logger.info(
        "parity on %d frames: %d/%d matched, min IoU %.4f, max |Δscore| %.2e -> %s",
        result.frames,
        matched,
        total,
        worst_iou,
        worst_diff,
        verdict,
    )
    return result


@dataclass
class Accuracy:
    frames: int
    f2: float
    score_threshold: float
    best_f2: float
    best_threshold: float
    map50: float
    map: float

    def to_dict(self) -> dict:
        return asdict(self)


def predict(
    runner: Runner,
    records: Sequence,
    width: int,
    height: int,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[list, list]:
    """Predictions in source pixels and ground truths for ``records`` (FrameRecords).

    ``transform`` changes each BGR frame (as decoded) before letterboxing: a probe's photometric change, which
    leaves the boxes where they are.
    """
    from edge_agent.dataset import load_image

    predictions, truths = [], []
    for record in records:
        image = load_image(record.image_path)
        tensor, fit = letterbox(image if transform is None else transform(image), width, height)
        boxes, scores, _ = runner(tensor)
        predictions.append((boxes_to_source(boxes, fit), scores.astype(np.float32)))
        truths.append(record.boxes)
    return predictions, truths


def accuracy(predictions: list, truths: list, score_threshold: float | None = None) -> Accuracy:
    """F2 at ``score_threshold`` (default: this variant's best-F2 threshold), best F2, COCO mAP."""
    search = metrics.best_f2_threshold(predictions, truths)
    threshold = search.threshold if score_threshold is None else score_threshold
    f2 = metrics.f2_score(predictions, truths, threshold).f2
    coco = metrics.coco_map(predictions, truths)
    return Accuracy(len(truths), f2, threshold, search.f2, search.threshold, coco["map_50"], coco["map"])


@dataclass
class Latency:
    runs: int
    median_ms: float
    p90_ms: float
    mean_ms: float

    def to_dict(self) -> dict:
        return asdict(self)


def measure_latency(runner: Runner, tensors: Sequence[np.ndarray], runs: int = 30, warmup: int = 3) -> Latency:
    """Median wall time of one inference over ``runs`` calls cycling through ``tensors``."""
    return measure_latencies({"only": runner}, tensors, runs, warmup)["only"]


def measure_latencies(
    runners: dict[str, Runner], tensors: Sequence[np.ndarray], runs: int = 30, warmup: int = 3
) -> dict[str, Latency]:
    """Median wall time per runner, the runners interleaved call by call so that load from other processes on a
    shared machine hits all of them alike. Warm-up calls are excluded (they allocate and pick kernels)."""
    for runner in runners.values():
        for i in range(warmup):
            runner(tensors[i % len(tensors)])
    times: dict[str, list[float]] = {name: [] for name in runners}
    for i in range(runs):
        for name, runner in runners.items():
            start = time.perf_counter()
            runner(tensors[i % len(tensors)])
            times[name].append((time.perf_counter() - start) * 1000.0)
    out = {}
    for name, values in times.items():
        values.sort()
        out[name] = Latency(
            runs, statistics.median(values), values[int(0.9 * (len(values) - 1))], statistics.fmean(values)
        )
    return out

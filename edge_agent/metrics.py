"""Detection and counting metrics, torch-free so the edge side, the benchmarks and training share one definition.

* The competition metric of "Help Protect the Great Barrier Reef": at each IoU threshold t in 0.30, 0.35, ..., 0.80,
  predictions (score >= the score threshold) are matched greedily in descending score to the *unmatched* ground
  truth of highest IoU, a match needing IoU >= t; TP, FP and FN are summed over the whole set and
  F2 = 5TP / (5TP + 4FN + FP); the reported F2 is the mean over the thresholds.
* COCO mAP@[.5:.95] and mAP@0.5 come from pycocotools, not from here.
* Recall per ground-truth size bucket (where the misses are), with the F2's own matching.
* Unique-count error for tracked counting.

Conventions (documented, tested): a set with no ground truth and no predictions scores F2 = 1.0 at that IoU (nothing
to find, nothing claimed); ties in score are broken by box coordinates, so the input order of predictions never
changes the result.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.30 + 0.05 * i, 2) for i in range(11))
# Starfish are 20-150 px in 1280x720 frames; these buckets split where detectors differ (small ones are the hard part).
SIZE_EDGES_PX: tuple[float, ...] = (30.0, 45.0, 60.0, 90.0)

Boxes = np.ndarray  # [N, 4] xyxy
Prediction = tuple[np.ndarray, np.ndarray]  # (boxes [N, 4] xyxy, scores [N])


@dataclass(frozen=True)
class F2Result:
    """F2 averaged over IoU thresholds, with the per-threshold values and counts behind it."""

    f2: float
    per_iou: dict[float, float]
    tp: dict[float, int]
    fp: dict[float, int]
    fn: dict[float, int]
    score_threshold: float

    def to_dict(self) -> dict:
        return {
            "f2": self.f2,
            "score_threshold": self.score_threshold,
            "per_iou": {f"{t:.2f}": v for t, v in self.per_iou.items()},
            "tp": {f"{t:.2f}": v for t, v in self.tp.items()},
            "fp": {f"{t:.2f}": v for t, v in self.fp.items()},
            "fn": {f"{t:.2f}": v for t, v in self.fn.items()},
        }


@dataclass(frozen=True)
class ThresholdSearch:
    """The score threshold that maximises F2, and the F2 it gives."""

    threshold: float
    f2: float
    per_iou: dict[float, float]
    result: F2Result


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``[N, 4]`` and ``[M, 4]`` xyxy boxes -> ``[N, M]``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _canonical_order(boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Descending score; ties broken by coordinates so that input order never matters."""
    return np.lexsort((boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], -scores))


def _greedy_match(pred_boxes: np.ndarray, gt_boxes: np.ndarray, iou_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """For predictions already in canonical order: which of them are true positives at this IoU, and for each ground
    truth the index of the prediction that took it (-1: none)."""
    matched = np.zeros(len(pred_boxes), dtype=bool)
    taken_by = np.full(len(gt_boxes), -1, dtype=np.int64)
    if len(pred_boxes) == 0 or len(gt_boxes) == 0:
        return matched, taken_by
    ious = box_iou(pred_boxes, gt_boxes)
    for i in range(len(pred_boxes)):
        candidates = np.where(taken_by >= 0, -1.0, ious[i])
        best = int(np.argmax(candidates))
        if candidates[best] >= iou_threshold:
            taken_by[best] = i
            matched[i] = True
    return matched, taken_by


def _validate(predictions: Sequence[Prediction], ground_truths: Sequence[Boxes]) -> None:
    if len(predictions) != len(ground_truths):
        raise ValueError(f"{len(predictions)} prediction frames but {len(ground_truths)} ground-truth frames")


class _Matches(NamedTuple):
    scores: np.ndarray  # every prediction's score
    matched: dict[float, np.ndarray]  # per IoU threshold: is each prediction a TP
    total_gt: int
    found_at: dict[float, np.ndarray]  # per IoU threshold: score of the prediction that took each ground truth (-inf)


def _match_all(
    predictions: Sequence[Prediction], ground_truths: Sequence[Boxes], iou_thresholds: Sequence[float]
) -> _Matches:
    """Scores of every prediction and, per IoU threshold, whether each is a TP and which score found each ground
    truth.

    Greedy matching in descending score means a prediction's fate never depends on lower-scored ones, so one pass
    at score threshold 0 gives the answer for every score threshold: at threshold s the TPs are the matched
    predictions scoring >= s, and the ground truths found are those whose ``found_at`` is >= s.
    """
    _validate(predictions, ground_truths)
    all_scores: list[np.ndarray] = []
    all_matched: dict[float, list[np.ndarray]] = {t: [] for t in iou_thresholds}
    all_found_at: dict[float, list[np.ndarray]] = {t: [] for t in iou_thresholds}
    total_gt = 0
    for (boxes, scores), gt in zip(predictions, ground_truths, strict=True):
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
        if len(boxes) != len(scores):
            raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores in one frame")
        order = _canonical_order(boxes, scores)
        boxes, scores = boxes[order], scores[order]
        total_gt += len(gt)
        all_scores.append(scores)
        for t in iou_thresholds:
            matched, taken_by = _greedy_match(boxes, gt, t)
            found_at = np.full(len(gt), -np.inf)
            found_at[taken_by >= 0] = scores[taken_by[taken_by >= 0]]
            all_matched[t].append(matched)
            all_found_at[t].append(found_at)

    def flat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    return _Matches(
        scores=flat(all_scores, np.float64),
        matched={t: flat(m, bool) for t, m in all_matched.items()},
        total_gt=total_gt,
        found_at={t: flat(f, np.float64) for t, f in all_found_at.items()},
    )


def _f2(tp: int, fp: int, fn: int) -> float:
    denominator = 5 * tp + 4 * fn + fp
    return 1.0 if denominator == 0 else 5 * tp / denominator


def _result_at(scores: np.ndarray, matched: dict[float, np.ndarray], total_gt: int, score_threshold: float) -> F2Result:
    keep = scores >= score_threshold
    per_iou, tps, fps, fns = {}, {}, {}, {}
    for t, is_tp in matched.items():
        tp = int((is_tp & keep).sum())
        fp = int((~is_tp & keep).sum())
        fn = total_gt - tp
        per_iou[t], tps[t], fps[t], fns[t] = _f2(tp, fp, fn), tp, fp, fn
    f2 = float(np.mean(list(per_iou.values())))
    return F2Result(f2=f2, per_iou=per_iou, tp=tps, fp=fps, fn=fns, score_threshold=float(score_threshold))


def f2_score(
    predictions: Sequence[Prediction],
    ground_truths: Sequence[Boxes],
    score_threshold: float = 0.0,
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> F2Result:
    """The competition F2 over a whole set at one score threshold."""
    matches = _match_all(predictions, ground_truths, iou_thresholds)
    return _result_at(matches.scores, matches.matched, matches.total_gt, score_threshold)


def best_f2_threshold(
    predictions: Sequence[Prediction],
    ground_truths: Sequence[Boxes],
    candidates: Sequence[float] | None = None,
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> ThresholdSearch:
    """The score threshold maximising F2.

    By default every distinct prediction score is a candidate (exact: F2 only changes at those), plus 1.01 meaning
    "predict nothing". Among equal F2 the highest threshold wins (fewer boxes for the same score).
    """
    matches = _match_all(predictions, ground_truths, iou_thresholds)
    thresholds = (
        np.unique(np.concatenate([matches.scores, [1.01]])).tolist() if candidates is None else list(candidates)
    )
    best: F2Result | None = None
    for threshold in sorted(thresholds, reverse=True):
        result = _result_at(matches.scores, matches.matched, matches.total_gt, float(threshold))
        if best is None or result.f2 > best.f2 + 1e-12:
            best = result
    assert best is not None  # candidates always holds at least 1.01
    return ThresholdSearch(threshold=best.score_threshold, f2=best.f2, per_iou=best.per_iou, result=best)


def f2_curve(
    predictions: Sequence[Prediction],
    ground_truths: Sequence[Boxes],
    thresholds: Sequence[float],
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> list[float]:
    """F2 at each of ``thresholds`` (the matching is done once, so a sweep costs one evaluation)."""
    matches = _match_all(predictions, ground_truths, iou_thresholds)
    return [_result_at(matches.scores, matches.matched, matches.total_gt, float(t)).f2 for t in thresholds]


def recall_by_size(
    predictions: Sequence[Prediction],
    ground_truths: Sequence[Boxes],
    score_threshold: float,
    edges: Sequence[float] = SIZE_EDGES_PX,
    iou_thresholds: Sequence[float] = (0.3, 0.5, 0.8),
) -> list[dict]:
    """Recall per ground-truth size bucket (size = sqrt(width * height) in the boxes' pixels), with the same greedy
    one-to-one matching as the F2 at ``score_threshold``: where a detector loses its starfish.

    Returns one dict per bucket: ``size_px`` ("30-45", "90+"), ``boxes`` and ``recall`` per IoU ("0.50": 0.93;
    None for an empty bucket).
    """
    if list(edges) != sorted(edges) or any(e <= 0 for e in edges):
        raise ValueError(f"size edges must be positive and increasing, got {list(edges)}")
    bounds = [0.0, *edges, float("inf")]
    matches = _match_all(predictions, ground_truths, iou_thresholds)
    gt = np.concatenate([np.asarray(g, dtype=np.float64).reshape(-1, 4) for g in ground_truths] or [np.zeros((0, 4))])
    all_sizes = np.sqrt(np.clip(gt[:, 2] - gt[:, 0], 0, None) * np.clip(gt[:, 3] - gt[:, 1], 0, None))
    all_found = {t: found_at >= score_threshold for t, found_at in matches.found_at.items()}
    buckets = []
    for low, high in zip(bounds[:-1], bounds[1:], strict=True):
        inside = (all_sizes >= low) & (all_sizes < high)
        label = f"{low:g}+" if math.isinf(high) else f"{low:g}-{high:g}"
        count = int(inside.sum())
        buckets.append(
            {
                "size_px": label,
                "boxes": count,
                "recall": {f"{t:.2f}": (float(all_found[t][inside].mean()) if count else None) for t in iou_thresholds},
            }
        )
    return buckets


def coco_map(predictions: Sequence[Prediction], ground_truths: Sequence[Boxes]) -> dict[str, float]:
    """COCO mAP@[.5:.95] and mAP@0.5 via pycocotools (single class). NaN when there is no ground truth at all."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    _validate(predictions, ground_truths)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    detections: list[list[float]] = []  # pycocotools' loadRes rows: image_id, x, y, w, h, score, category
    for image_id, ((boxes, scores), gt) in enumerate(zip(predictions, ground_truths, strict=True), start=1):
        images.append({"id": image_id})
        for x1, y1, x2, y2 in np.asarray(gt, dtype=np.float64).reshape(-1, 4):
            w, h = x2 - x1, y2 - y1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [x1, y1, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        for (x1, y1, x2, y2), score in zip(
            np.asarray(boxes).reshape(-1, 4), np.asarray(scores).reshape(-1), strict=True
        ):
            detections.append([image_id, x1, y1, x2 - x1, y2 - y1, float(score), 1])
    if not annotations:
        return {"map": float("nan"), "map_50": float("nan")}
    if not detections:
        return {"map": 0.0, "map_50": 0.0}
    # pycocotools reports through print(); keep it out of our logs and the user's terminal.
    with contextlib.redirect_stdout(io.StringIO()):
        ground = COCO()
        ground.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "cots"}]}
        ground.createIndex()
        detected = ground.loadRes(np.array(detections, dtype=np.float64))
        evaluation = COCOeval(ground, detected, iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {"map": float(evaluation.stats[0]), "map_50": float(evaluation.stats[1])}


def unique_count_error(predicted_unique: int, true_unique: int) -> float:
    """|predicted distinct tracks - true distinct starfish| / true; with no true starfish the divisor is 1."""
    if predicted_unique < 0 or true_unique < 0:
        raise ValueError(f"counts must be non-negative, got predicted={predicted_unique}, true={true_unique}")
    return abs(predicted_unique - true_unique) / max(true_unique, 1)


def true_unique_count(track_ids_per_frame: Sequence[np.ndarray | None]) -> int:
    """Distinct ground-truth track ids over frames (synthetic data only: real data has no track ids)."""
    if any(ids is None for ids in track_ids_per_frame):
        raise ValueError("ground truth has no track ids (real Kaggle data); unique-count error needs synthetic data")
    ids = [np.asarray(i) for i in track_ids_per_frame if i is not None and len(i)]
    return int(len(np.unique(np.concatenate(ids)))) if ids else 0

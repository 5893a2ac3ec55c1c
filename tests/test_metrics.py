"""Properties of the competition F2, the threshold search, COCO mAP and the unique-count error."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.metrics import (
    IOU_THRESHOLDS,
    best_f2_threshold,
    box_iou,
    coco_map,
    f2_score,
    recall_by_size,
    true_unique_count,
    unique_count_error,
)


@st.composite
def boxes_strategy(draw, max_boxes: int = 6) -> np.ndarray:
    n = draw(st.integers(0, max_boxes))
    rows = []
    for _ in range(n):
        x1 = draw(st.integers(0, 600))
        y1 = draw(st.integers(0, 300))
        w = draw(st.integers(4, 150))
        h = draw(st.integers(4, 150))
        rows.append([x1, y1, x1 + w, y1 + h])
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


@st.composite
def frames_strategy(draw) -> list[np.ndarray]:
    return draw(st.lists(boxes_strategy(), min_size=1, max_size=5))


def _perfect(gts: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(g.copy(), np.linspace(0.99, 0.5, len(g))) for g in gts]


def test_iou_thresholds_are_the_competition_grid() -> None:
    assert IOU_THRESHOLDS == (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8)


@given(frames_strategy())
@settings(max_examples=60, deadline=None)
def test_perfect_predictions_score_one(gts: list[np.ndarray]) -> None:
    result = f2_score(_perfect(gts), gts, score_threshold=0.0)
    assert result.f2 == pytest.approx(1.0)
    assert all(fp == 0 for fp in result.fp.values())


@given(frames_strategy(), st.data())
@settings(max_examples=60, deadline=None)
def test_extra_false_positive_never_raises_f2(gts: list[np.ndarray], data: st.DataObject) -> None:
    preds = [(g + data.draw(st.integers(-8, 8)), np.full(len(g), 0.7)) for g in gts]
    before = f2_score(preds, gts).f2
    frame = data.draw(st.integers(0, len(gts) - 1))
    # Far from every ground-truth box (which all live within x < 760), so it can only be a false positive.
    far = np.array([[2000.0, 2000.0, 2050.0, 2050.0]])
    score = data.draw(st.floats(0.0, 1.0))
    boxes, scores = preds[frame]
    preds[frame] = (np.vstack([boxes, far]), np.append(scores, score))
    assert f2_score(preds, gts).f2 <= before + 1e-12


@given(frames_strategy(), st.randoms(use_true_random=False))
@settings(max_examples=60, deadline=None)
def test_prediction_order_does_not_matter(gts: list[np.ndarray], rnd) -> None:
    preds = [(g + 3.0, np.round(np.linspace(0.9, 0.4, len(g)), 1)) for g in gts]
    shuffled = []
    for boxes, scores in preds:
        order = list(range(len(boxes)))
        rnd.shuffle(order)
        shuffled.append((boxes[order], scores[order]))
    assert f2_score(preds, gts).f2 == f2_score(shuffled, gts).f2


def test_empty_predictions_and_empty_ground_truth() -> None:
    empty = np.zeros((0, 4))
    nothing = [(empty, np.zeros(0))]
    # Nothing to find and nothing claimed is perfect by convention.
    assert f2_score(nothing, [empty]).f2 == 1.0
    # Missing every starfish scores zero.
    assert f2_score(nothing, [np.array([[0, 0, 10, 10]])]).f2 == 0.0
    # Only false positives on an empty frame also score zero.
    assert f2_score([(np.array([[0, 0, 10, 10]]), np.array([0.9]))], [empty]).f2 == 0.0


def test_f2_weights_recall_over_precision() -> None:
    gt = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]])]
    one_miss = [(np.array([[0, 0, 10, 10]]), np.array([0.9]))]
    one_false = [(np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]]), np.array([0.9, 0.8, 0.7]))]
    # 5/(5+4) versus 10/(10+1): a miss costs four times a false alarm.
    assert f2_score(one_miss, gt).f2 == pytest.approx(5 / 9)
    assert f2_score(one_false, gt).f2 == pytest.approx(10 / 11)


def test_greedy_matching_takes_highest_score_first() -> None:
    gt = [np.array([[0, 0, 100, 100]])]
    preds = [(np.array([[0, 0, 100, 100], [0, 0, 90, 100]]), np.array([0.5, 0.9]))]
    result = f2_score(preds, gt)
    # The 0.9 box (IoU 0.9) takes the ground truth at every threshold; the exact box becomes the false positive.
    assert all(tp == 1 and fp == 1 for tp, fp in zip(result.tp.values(), result.fp.values(), strict=True))
    # At IoU 0.9 it would have been different, so the per-IoU grid really is used.
    assert set(result.per_iou) == set(IOU_THRESHOLDS)


def test_iou_threshold_boundary_is_inclusive() -> None:
    gt = [np.array([[0.0, 0.0, 10.0, 10.0]])]
    # IoU exactly 0.5.
    preds = [(np.array([[0.0, 0.0, 10.0, 5.0]]), np.array([0.9]))]
    result = f2_score(preds, gt)
    assert result.tp[0.5] == 1 and result.tp[0.55] == 0


def test_best_threshold_drops_low_score_false_positives() -> None:
    gt = [np.array([[0, 0, 50, 50]]), np.zeros((0, 4))]
    preds = [
        (np.array([[0, 0, 50, 50], [200, 200, 260, 260]]), np.array([0.9, 0.3])),
        (np.array([[10, 10, 40, 40]]), np.array([0.2])),
    ]
    search = best_f2_threshold(preds, gt)
    assert search.threshold == pytest.approx(0.9)
    assert search.f2 == pytest.approx(1.0)
    assert search.f2 >= f2_score(preds, gt, score_threshold=0.0).f2


@given(frames_strategy(), st.data())
@settings(max_examples=40, deadline=None)
def test_best_threshold_is_at_least_any_fixed_threshold(gts: list[np.ndarray], data: st.DataObject) -> None:
    preds = []
    for g in gts:
        noise = data.draw(st.integers(-20, 20))
        scores = np.array([data.draw(st.floats(0.0, 1.0)) for _ in range(len(g))])
        preds.append((g + noise, scores))
    search = best_f2_threshold(preds, gts)
    fixed = data.draw(st.floats(0.0, 1.0))
    assert search.f2 >= f2_score(preds, gts, score_threshold=fixed).f2 - 1e-12
    assert search.f2 == pytest.approx(f2_score(preds, gts, score_threshold=search.threshold).f2)


def test_mismatched_lengths_are_rejected() -> None:
    with pytest.raises(ValueError, match="prediction frames"):
        f2_score([], [np.zeros((0, 4))])
    with pytest.raises(ValueError, match="boxes but"):
        f2_score([(np.zeros((2, 4)), np.zeros(1))], [np.zeros((0, 4))])


def test_box_iou_known_values() -> None:
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 1 / 3, 0.0]])
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 3)


def test_coco_map_from_pycocotools() -> None:
    gts = [np.array([[10, 10, 60, 60]]), np.array([[100, 100, 180, 150]]), np.zeros((0, 4))]
    perfect = [(g.copy(), np.full(len(g), 0.9)) for g in gts]
    assert coco_map(perfect, gts) == {"map": pytest.approx(1.0), "map_50": pytest.approx(1.0)}
    shifted = [(g + 5, np.full(len(g), 0.9)) for g in gts]
    shifted_map = coco_map(shifted, gts)
    assert shifted_map["map"] < shifted_map["map_50"] == pytest.approx(1.0)
    nothing = [(np.zeros((0, 4)), np.zeros(0)) for _ in gts]
    assert coco_map(nothing, gts) == {"map": 0.0, "map_50": 0.0}
    assert math.isnan(coco_map(nothing, [np.zeros((0, 4))] * 3)["map"])


def test_unique_count_error() -> None:
    assert unique_count_error(10, 10) == 0.0
    assert unique_count_error(12, 10) == pytest.approx(0.2)
    assert unique_count_error(8, 10) == pytest.approx(0.2)
    assert unique_count_error(3, 0) == 3.0
    with pytest.raises(ValueError):
        unique_count_error(-1, 3)
    assert true_unique_count([np.array([1, 2]), np.array([2, 3]), np.zeros(0, dtype=np.int64)]) == 3
    with pytest.raises(ValueError, match="no track ids"):
        true_unique_count([np.array([1]), None])


def test_recall_by_size_buckets_and_iou_levels() -> None:
    small = [0.0, 0.0, 20.0, 20.0]  # size 20 -> bucket 0-30
    large = [100.0, 100.0, 200.0, 200.0]  # size 100 -> bucket 90+
    gt = [np.array([small, large]), np.zeros((0, 4))]
    # The small one is found loosely (IoU 0.64), the large one exactly; a false alarm in the empty frame.
    preds = [
        (np.array([[0.0, 0.0, 20.0, 12.8], large]), np.array([0.9, 0.8])),
        (np.array([[300.0, 300.0, 340.0, 340.0]]), np.array([0.95])),
    ]
    buckets = {b["size_px"]: b for b in recall_by_size(preds, gt, score_threshold=0.5)}
    assert list(buckets) == ["0-30", "30-45", "45-60", "60-90", "90+"]
    assert buckets["0-30"]["boxes"] == 1 and buckets["0-30"]["recall"] == {"0.30": 1.0, "0.50": 1.0, "0.80": 0.0}
    assert buckets["90+"]["recall"] == {"0.30": 1.0, "0.50": 1.0, "0.80": 1.0}
    assert buckets["45-60"] == {"size_px": "45-60", "boxes": 0, "recall": {"0.30": None, "0.50": None, "0.80": None}}
    # Above the large box's score (0.8) it is no longer kept and becomes a miss; the small one (0.9) stays found.
    above = {b["size_px"]: b for b in recall_by_size(preds, gt, score_threshold=0.85)}
    assert above["0-30"]["recall"]["0.30"] == 1.0 and above["90+"]["recall"]["0.30"] == 0.0


@given(frames_strategy(), st.data())
@settings(max_examples=60, deadline=None)
def test_recall_by_size_agrees_with_the_f2_true_positives(gts: list[np.ndarray], data: st.DataObject) -> None:
    preds = [(g + data.draw(st.integers(-10, 10)), np.linspace(0.9, 0.2, len(g))) for g in gts]
    threshold = data.draw(st.floats(0.0, 1.0))
    buckets = recall_by_size(preds, gts, threshold)
    result = f2_score(preds, gts, threshold)
    assert sum(b["boxes"] for b in buckets) == sum(len(g) for g in gts)
    for iou in (0.3, 0.5, 0.8):
        found = sum(round(b["recall"][f"{iou:.2f}"] * b["boxes"]) for b in buckets if b["boxes"])
        assert found == result.tp[iou]


def test_recall_by_size_rejects_unordered_edges() -> None:
    with pytest.raises(ValueError, match="positive and increasing"):
        recall_by_size([(np.zeros((0, 4)), np.zeros(0))], [np.zeros((0, 4))], 0.5, edges=(45, 30))

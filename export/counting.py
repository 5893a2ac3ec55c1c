"""Calibrate a variant's counting settings on clips with known counts (the export chain's `--count-clips`).

The best-F2 threshold scores single frames. The agent's product is a unique count, and a count also pays for every
false box that survives ``min_hits`` frames as a track: on unfamiliar water (the out-of-distribution renderer) the
best-F2 threshold of the shipped v8 counted 265 starfish for 137, while 0.95 with ``min_hits`` 2, chosen on other
clips, counted 109 (train/results/generalize/stage_d/). So each variant gets the detector threshold and
``min_hits`` whose replayed count (`edge_agent.tracking.replay`, the agent's own tracker) has the lowest mean
per-clip error, averaged over the selection clip sets. The mean per clip, not the summed count: in a sum, one
clip's false tracks cancel another's misses. Every other tracker setting stays the agent's default.

Choose on clips used for nothing else, and report the count on others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.bundle import Counting
from edge_agent.config import TrackerConfig
from edge_agent.detectors.base import DEFAULT_MIN_HITS
from edge_agent.preprocess import letterbox, postprocess
from edge_agent.tracking.replay import (
    CountSetting,
    RecordedFrame,
    SettingResult,
    clip_paths,
    grid_floor,
    record_clip,
    replay_grid,
    settings_grid,
    true_counts,
)
from export.runners import Runner

logger = logging.getLogger(__name__)

COUNT_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
COUNT_MIN_HITS = (2, 3, 5, 8)


@dataclass(frozen=True)
class ClipSet:
    """A generated dataset with videos: its name, true distinct starfish per video, and the clip files."""

    name: str
    truth: dict[int, int]
    clips: dict[int, Path]


def load_clip_sets(roots: Sequence[Path]) -> list[ClipSet]:
    """Each root's clips and true counts; ValueError naming the root when one is not a generated clip set."""
    sets = []
    for root in roots:
        if not Path(root).is_dir():
            raise ValueError(f"counting clips {root}: not a directory")
        truth = true_counts(Path(root))
        sets.append(ClipSet(Path(root).name, truth, clip_paths(Path(root), truth, None)))
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"counting clip sets need distinct directory names, got {names}")
    return sets


def runner_detect(runner: Runner, width: int, height: int, floor: float) -> Callable[[np.ndarray], tuple]:
    """A BGR frame -> (boxes in source pixels, scores) at or above ``floor``: the agent's pre- and post-processing
    around an export-time runner."""

    def detect(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tensor, fit = letterbox(image, width, height)
        boxes, scores, _ = postprocess(*runner(tensor), fit, floor)  # as `Detector.detect`: padding boxes dropped
        return boxes, scores.astype(np.float32)

    return detect


def count_grid(
    best_f2_threshold: float, thresholds: Sequence[float] = COUNT_THRESHOLDS, min_hits: Sequence[int] = COUNT_MIN_HITS
) -> list[CountSetting]:
    """The settings tried: the grid plus the agent's uncalibrated setting (best-F2 threshold, default
    ``min_hits``), so calibration can only match or beat it on the selection clips."""
    tracker = TrackerConfig()
    return settings_grid(
        [*thresholds, round(best_f2_threshold, 4)],
        [*min_hits, DEFAULT_MIN_HITS],
        iou_threshold=tracker.iou_threshold,
        max_age_s=tracker.max_age_s,
        low_score_threshold=tracker.low_score_threshold,
        low_iou_threshold=tracker.low_iou_threshold,
    )


def averaged_error(results_per_set: Sequence[Sequence[SettingResult]], i: int) -> float:
    """Setting ``i``'s mean per-clip error, averaged over the clip sets."""
    return sum(results[i].mean_clip_error for results in results_per_set) / len(results_per_set)


def choose(results_per_set: Sequence[Sequence[SettingResult]]) -> int:
    """Index of the setting with the lowest mean per-clip error averaged over the sets; ties go to the higher
    threshold (fewer false tracks where the water is new), then the lower ``min_hits`` (starfish seen briefly)."""
    grid = [r.setting for r in results_per_set[0]]

    def key(i: int) -> tuple[float, float, int]:
        return (round(averaged_error(results_per_set, i), 9), -grid[i].score_threshold, grid[i].min_hits)

    return min(range(len(grid)), key=key)


def calibrate(
    runner: Runner, clip_sets: Sequence[ClipSet], width: int, height: int, best_f2_threshold: float
) -> tuple[Counting, dict[str, Any]]:
    """Record every clip once through ``runner``, replay the grid, and pick the setting (`choose`).

    Returns the manifest's `Counting` entry and a report: every setting's errors per set, and the uncalibrated
    setting's, beside the chosen one.
    """
    if not clip_sets:
        raise ValueError("need at least one counting clip set")
    grid = count_grid(best_f2_threshold)
    detect = runner_detect(runner, width, height, grid_floor(grid))
    per_set: list[list[SettingResult]] = []
    for clip_set in clip_sets:
        recorded: dict[int, list[RecordedFrame]] = {v: record_clip(detect, clip) for v, clip in clip_set.clips.items()}
        per_set.append(replay_grid(recorded, clip_set.truth, grid))
    chosen = choose(per_set)
    uncalibrated = next(
        i
        for i, s in enumerate(grid)
        if s.min_hits == DEFAULT_MIN_HITS and abs(s.score_threshold - round(best_f2_threshold, 4)) < 1e-9
    )
    setting = grid[chosen]
    mean_error = averaged_error(per_set, chosen)
    counting = Counting(
        score_threshold=setting.score_threshold,
        min_hits=setting.min_hits,
        selected_on=tuple(s.name for s in clip_sets),
        mean_clip_error=round(mean_error, 6),
    )

    def row(i: int) -> dict[str, Any]:
        return {
            "score_threshold": grid[i].score_threshold,
            "min_hits": grid[i].min_hits,
            "sets": {clip_set.name: _errors(results[i]) for clip_set, results in zip(clip_sets, per_set, strict=True)},
        }

    report = {
        "selected_on": [{"name": s.name, "clips": len(s.clips), "true": sum(s.truth.values())} for s in clip_sets],
        "chosen": row(chosen),
        "uncalibrated": row(uncalibrated),
        "grid": [row(i) for i in range(len(grid))],
    }
    logger.info(
        "counting calibrated: threshold %.2f, min_hits %d (mean per-clip error %.0f %%; uncalibrated %.2f / %d: "
        "%.0f %%)",
        setting.score_threshold,
        setting.min_hits,
        100 * mean_error,
        grid[uncalibrated].score_threshold,
        grid[uncalibrated].min_hits,
        100 * averaged_error(per_set, uncalibrated),
    )
    return counting, report


def _errors(result: SettingResult) -> dict[str, Any]:
    return {
        "counted": result.total_counted,
        "true": result.total_true,
        "total_error": round(result.total_error, 4),
        "mean_clip_error": round(result.mean_clip_error, 4),
        "worst_clip_error": round(result.worst_clip_error, 4),
    }

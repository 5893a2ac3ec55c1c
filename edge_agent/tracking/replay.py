"""The agent's unique count replayed from recorded detections, for any counting setting.

The count depends on the counting settings only after detection: the detector's score threshold (high vs low
boxes) and the tracker's parameters. So a clip is run through a detector once (`record_clip`, every box down to
the lowest floor any setting needs), and `replay` then feeds the agent's own `Tracker` exactly as
`Agent._process` does (same boxes at or above ``min(low floor, threshold)``, same frame indices, same file clock)
for each setting. `starfish bench count-sweep` reports a grid of settings this way; the export chain
(`export.counting`) calibrates each variant's counting settings with it. Torch-free: only numpy and OpenCV.

Clip sets are generated datasets (the synthetic generator's or the out-of-distribution renderer's): both write
``videos/video_{id}.mp4`` and ``synth.json`` with the true number of distinct starfish per video.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_agent.capture.camera import media_clock_fps
from edge_agent.tracking.tracker import Tracker


@dataclass(frozen=True)
class RecordedFrame:
    index: int
    media_s: float
    boxes: np.ndarray  # [N, 4] xyxy, source pixels
    scores: np.ndarray  # [N]


@dataclass(frozen=True)
class CountSetting:
    """One combination of the settings that act after detection (see `edge_agent.config.TrackerConfig`)."""

    score_threshold: float
    min_hits: int
    iou_threshold: float
    max_age_s: float
    low_score_threshold: float | None
    low_iou_threshold: float


@dataclass(frozen=True)
class SettingResult:
    setting: CountSetting
    counted: dict[int, int]  # video_id -> unique count
    total_counted: int
    total_true: int
    total_error: float  # |sum counted - sum true| / sum true
    mean_clip_error: float
    worst_clip_error: float

    def to_dict(self) -> dict:
        data = asdict(self)
        data["counted"] = {str(k): v for k, v in self.counted.items()}
        return data


def record_clip(detect: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], clip: Path) -> list[RecordedFrame]:
    """Every frame of a video file through ``detect`` (boxes, scores at the lowest floor), on the file's clock.

    The clock is the file camera's (`edge_agent.capture.camera.media_clock_fps`): frame ``i`` at ``i / fps``.
    """
    capture = cv2.VideoCapture(str(clip))
    if not capture.isOpened():
        raise ValueError(f"{clip}: cannot open the video")
    fps = media_clock_fps(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    frames: list[RecordedFrame] = []
    try:
        while True:
            ok, image = capture.read()
            if not ok:
                break
            boxes, scores = detect(image)
            frames.append(RecordedFrame(len(frames), len(frames) / fps, boxes, scores))
    finally:
        capture.release()
    if not frames:
        raise ValueError(f"{clip}: no decodable frames")
    return frames


def replay(frames: Sequence[RecordedFrame], setting: CountSetting) -> int:
    """The agent's unique count for one clip under ``setting`` (what `Agent._process` would have counted)."""
    tracker = Tracker(setting.iou_threshold, setting.max_age_s, setting.min_hits, setting.low_iou_threshold)
    floor = setting.score_threshold
    if setting.low_score_threshold is not None:
        floor = min(setting.low_score_threshold, setting.score_threshold)
    for frame in frames:
        keep = frame.scores >= floor
        tracker.update(
            frame.boxes[keep],
            frame.scores[keep],
            frame.index,
            frame.media_s,
            clock=frame.media_s,
            score_threshold=setting.score_threshold,
        )
    tracker.flush()
    return tracker.unique_count


def true_counts(root: Path) -> dict[int, int]:
    """video_id -> true distinct starfish, from the dataset's ``synth.json``."""
    meta_path = root / "synth.json"
    if not meta_path.is_file():
        raise ValueError(f"{root} has no synth.json (true distinct-starfish counts): use a generated dataset")
    try:
        videos = json.loads(meta_path.read_text())["videos"]
        return {int(v["video_id"]): int(v["distinct_starfish"]) for v in videos}
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{meta_path} does not list videos with video_id and distinct_starfish: {exc}") from None


def count_errors(counted: dict[int, int], truth: dict[int, int]) -> tuple[float, float, float]:
    """(error of the summed counts, mean per-clip error, worst per-clip error); a clip's error is
    |counted - true| / max(true, 1)."""
    per_clip = [abs(counted[v] - truth[v]) / max(truth[v], 1) for v in counted]
    total_true = sum(truth[v] for v in counted)
    total_error = abs(sum(counted.values()) - total_true) / max(total_true, 1)
    return total_error, sum(per_clip) / len(per_clip), max(per_clip)


def clip_paths(root: Path, truth: dict[int, int], videos: list[int] | None) -> dict[int, Path]:
    """video_id -> clip file for the requested videos (default: every video in ``truth``, the dataset's
    `true_counts`), all present."""
    wanted = sorted(truth) if not videos else videos
    missing = [v for v in wanted if v not in truth]
    if missing:
        raise ValueError(f"{root} has no video(s) {missing}; it has {sorted(truth)}")
    clips = {v: root / "videos" / f"video_{v}.mp4" for v in wanted}
    absent = [str(p) for p in clips.values() if not p.is_file()]
    if absent:
        raise ValueError(f"clip(s) missing (generate the dataset with videos): {', '.join(absent)}")
    return clips


def check_grid(thresholds: Sequence[float] | None, min_hits: Sequence[int] | None) -> None:
    """One clear error for a grid value the agent's config would refuse."""
    bad = [t for t in thresholds or [] if not 0 <= t <= 1]
    if bad:
        raise ValueError(f"score thresholds must lie in [0, 1], got {bad}")
    bad_hits = [m for m in min_hits or [] if m < 1]
    if bad_hits:
        raise ValueError(f"min_hits must be >= 1, got {bad_hits}")


def settings_grid(
    thresholds: Sequence[float],
    min_hits: Sequence[int],
    *,
    iou_threshold: float,
    max_age_s: float,
    low_score_threshold: float | None,
    low_iou_threshold: float,
) -> list[CountSetting]:
    if not thresholds or not min_hits:
        raise ValueError("need at least one score threshold and one min_hits value")
    check_grid(thresholds, min_hits)
    return [
        CountSetting(float(t), int(m), iou_threshold, max_age_s, low_score_threshold, low_iou_threshold)
        for t, m in itertools.product(sorted(set(thresholds)), sorted(set(min_hits)))
    ]


def grid_floor(grid: Sequence[CountSetting]) -> float:
    """The lowest score any setting of ``grid`` keeps (its threshold, or its low-score second pass): what a
    recording must keep so that every setting can be replayed from it."""
    return min(
        min(s.score_threshold, s.low_score_threshold if s.low_score_threshold is not None else 1.0) for s in grid
    )


def replay_grid(
    recorded: dict[int, list[RecordedFrame]], truth: dict[int, int], grid: Sequence[CountSetting]
) -> list[SettingResult]:
    """Every setting of ``grid`` replayed over every recorded clip, with its count errors against ``truth``."""
    wanted = sorted(recorded)
    total_true = sum(truth[v] for v in wanted)
    results = []
    for setting in grid:
        counted = {v: replay(recorded[v], setting) for v in wanted}
        total_error, mean_clip_error, worst_clip_error = count_errors(counted, truth)
        results.append(
            SettingResult(
                setting=setting,
                counted=counted,
                total_counted=sum(counted.values()),
                total_true=total_true,
                total_error=total_error,
                mean_clip_error=mean_clip_error,
                worst_clip_error=worst_clip_error,
            )
        )
    return results

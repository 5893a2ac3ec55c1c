"""How the agent's unique count depends on its counting settings: `starfish bench count-sweep BUNDLE --data ROOT`.

`starfish bench counting` runs the real agent once per setting, which costs a full inference pass each time. The
count, though, depends on the settings only after detection: the detector's score threshold (high vs low boxes)
and the tracker's parameters. So this runs the agent's own detector (the verified bundle, the agent's variant and
back end) once per clip, keeping every box down to the lowest floor any setting needs, then replays the agent's
own `Tracker` over the recorded boxes for every combination, exactly as `Agent._process` feeds it (same boxes at
or above ``min(low floor, threshold)``, same frame indices, same file clock). A test checks that the replay at the
agent's default setting gives the real agent's counts.

Choose a setting on clips used for nothing else (e.g. `ood_val`'s), then report it on others: picking the setting
whose false tracks happen to cancel its misses on the very clips it is reported on would be no evidence.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from benchmarks.counting import agent_detector, clip_paths, count_errors, true_counts
from edge_agent.capture.camera import media_clock_fps

logger = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class SweepResult:
    bundle: str
    variant: str
    backend: str
    data: str
    bundle_threshold: float
    true: dict[int, int]
    frames: dict[int, int]
    settings: list[SettingResult]

    def to_dict(self) -> dict:
        return {
            "bundle": self.bundle,
            "variant": self.variant,
            "backend": self.backend,
            "data": self.data,
            "bundle_threshold": self.bundle_threshold,
            "true": {str(k): v for k, v in self.true.items()},
            "frames": {str(k): v for k, v in self.frames.items()},
            "settings": [s.to_dict() for s in self.settings],
        }


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
    from edge_agent.tracking import Tracker

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


def sweep_counting(
    bundle: Path,
    keys: list[Path],
    root: Path,
    *,
    thresholds: Sequence[float] | None,
    min_hits: Sequence[int] | None,
    workdir: Path,
    videos: list[int] | None = None,
    variant: str | None = None,
    threads: int | None = None,
    on_frame: Callable[[], None] | None = None,
) -> SweepResult:
    """Record every clip of ``root`` once with the agent's detector, then replay each setting of the grid.

    ``thresholds`` None: the bundle's own threshold for the running variant; ``min_hits`` None: the agent's default.
    Every other tracker setting is the agent's default.
    """
    from edge_agent.app import load_detector
    from edge_agent.config import load_config_data

    check_grid(thresholds, min_hits)
    truth = true_counts(root)
    clips = clip_paths(root, truth, videos)
    wanted = list(clips)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = load_config_data(
        {
            "device_id": "bench-count-sweep",
            "cameras": [{"id": "clip", "source": str(next(iter(clips.values())))}],
            "detector": agent_detector(bundle, keys, variant, threads),
            "outbox_path": str(workdir / "outbox.sqlite3"),
            "state_dir": str(workdir / "state"),  # a benchmark must not raise a device's anti-rollback floor
        }
    )
    detector, _ = load_detector(cfg)
    bundle_threshold = float(detector.score_threshold)
    tracker = cfg.tracker
    grid = settings_grid(
        thresholds if thresholds else [bundle_threshold],
        min_hits if min_hits else [tracker.min_hits],
        iou_threshold=tracker.iou_threshold,
        max_age_s=tracker.max_age_s,
        low_score_threshold=tracker.low_score_threshold,
        low_iou_threshold=tracker.low_iou_threshold,
    )
    floor = min(
        min(s.score_threshold for s in grid),
        tracker.low_score_threshold if tracker.low_score_threshold is not None else 1.0,
    )

    def detect(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        found = detector.detect(image, floor)
        if on_frame is not None:
            on_frame()
        return found.boxes, found.scores

    recorded = {}
    try:
        for v, clip in clips.items():
            recorded[v] = record_clip(detect, clip)
            logger.info("clip %d: %d frames recorded", v, len(recorded[v]))
    finally:
        detector.close()
    results = []
    total_true = sum(truth[v] for v in wanted)
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
    return SweepResult(
        bundle=str(bundle),
        variant=str(getattr(detector, "variant", variant or "")),
        backend=str(getattr(detector, "name", "")),
        data=str(root),
        bundle_threshold=bundle_threshold,
        true={v: truth[v] for v in wanted},
        frames={v: len(recorded[v]) for v in wanted},
        settings=results,
    )

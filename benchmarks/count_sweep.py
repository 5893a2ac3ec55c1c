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

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.counting import agent_detector
from edge_agent.tracking.replay import (
    SettingResult,
    check_grid,
    clip_paths,
    grid_floor,
    record_clip,
    replay_grid,
    settings_grid,
    true_counts,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepResult:
    bundle: str
    variant: str
    backend: str
    data: str
    bundle_threshold: float  # the threshold the agent runs the variant at (its counting one when calibrated)
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

    ``thresholds`` / ``min_hits`` None: what the agent runs the variant at (its calibrated counting settings when
    the bundle carries them, else its best-F2 threshold and the default ``min_hits``).
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
        min_hits if min_hits else [detector.min_hits],
        iou_threshold=tracker.iou_threshold,
        max_age_s=tracker.max_age_s,
        low_score_threshold=tracker.low_score_threshold,
        low_iou_threshold=tracker.low_iou_threshold,
    )
    floor = grid_floor(grid)

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
    results = replay_grid(recorded, truth, grid)
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

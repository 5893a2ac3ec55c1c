"""Real frames for timing and accuracy: from a reef dataset directory or a video clip.

Timing rotates through a pool of distinct frames (never zeros, never one cached input). Frames are picked evenly
spaced across the whole source, so that every back end of a run, and every run on the same data, sees the same ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


class FrameSourceError(ValueError):
    """The frame source is missing, empty or unreadable."""


@dataclass(frozen=True)
class LabelledFrame:
    """A frame's image path and its ground-truth boxes (xyxy, source px) for accuracy."""

    image_path: Path
    boxes: np.ndarray


def evenly_spaced(count: int, total: int) -> list[int]:
    """``count`` indices spread over ``range(total)`` (all of them when ``count`` is 0 or >= total)."""
    if total <= 0:
        return []
    if count <= 0 or count >= total:
        return list(range(total))
    return sorted({int(i) for i in np.linspace(0, total - 1, count).round()})


def dataset_frames(root: Path, count: int, video_ids: list[int] | None = None) -> list[LabelledFrame]:
    """``count`` evenly spaced frames of a reef dataset (Kaggle layout), with their boxes; only the videos in
    ``video_ids`` when given (e.g. the held-out validation video, so accuracy is not measured on training frames)."""
    from edge_agent.dataset import ReefDataset

    if not root.is_dir():
        raise FrameSourceError(f"--data {root} is not a directory")
    dataset = ReefDataset.open(root)
    records = sorted(dataset.records, key=lambda r: (str(r.video_id), int(r.video_frame)))
    if video_ids:
        present = sorted({int(r.video_id) for r in records})
        records = [r for r in records if int(r.video_id) in set(video_ids)]
        if not records:
            raise FrameSourceError(f"--data {root} has no frames of video(s) {video_ids} (videos: {present})")
    if not records:
        raise FrameSourceError(f"--data {root} holds no usable frames ({dataset.report})")
    return [
        LabelledFrame(image_path=Path(records[i].image_path), boxes=np.asarray(records[i].boxes, dtype=np.float32))
        for i in evenly_spaced(count, len(records))
    ]


def load_dataset_pool(root: Path, count: int, video_ids: list[int] | None = None) -> list[np.ndarray]:
    """Decoded BGR frames for the timing pool."""
    from edge_agent.dataset import load_image

    return [load_image(frame.image_path) for frame in dataset_frames(root, count, video_ids)]


def load_clip_pool(clip: Path, count: int) -> list[np.ndarray]:
    """``count`` frames spread over a video clip, decoded once up front so decoding is never timed."""
    import cv2

    if not clip.is_file():
        raise FrameSourceError(f"--clip {clip} does not exist")
    capture = cv2.VideoCapture(str(clip))
    if not capture.isOpened():
        raise FrameSourceError(f"--clip {clip} cannot be opened by OpenCV")
    try:
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        wanted = set(evenly_spaced(count, total)) if total > 0 else None
        frames: list[np.ndarray] = []
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if wanted is None or index in wanted:
                frames.append(frame)
            index += 1
            if len(frames) >= count > 0:
                break
    finally:
        capture.release()
    if not frames:
        raise FrameSourceError(f"--clip {clip} yielded no frames")
    return frames


def load_pool(
    data: Path | None, clip: Path | None, count: int, video_ids: list[int] | None = None
) -> tuple[list[np.ndarray], str]:
    """The timing pool and a description of where it came from; ``--clip`` wins when both are given."""
    if clip is not None:
        return load_clip_pool(clip, count), f"clip:{clip}"
    if data is not None:
        return load_dataset_pool(data, count, video_ids), f"dataset:{data}"
    raise FrameSourceError("give --data DIR (reef dataset) or --clip VIDEO: timing needs real frames")


def synthetic_dataset(cache_dir: Path, frames: int = 32, seed: int = 0) -> Path:
    """A small synthetic reef dataset (the project's generator, 1280x720, with boxes), made once and cached.

    The fallback when neither ``--data`` nor ``--clip`` is given: real rendered reef frames with starfish, so timing
    never sees zeros or noise, and accuracy is still measured (on synthetic labels).
    """
    from train.synth import GENERATOR_VERSION, generate_dataset

    root = cache_dir / f"bench-synth-v{GENERATOR_VERSION}-seed{seed}-{frames}"
    if (root / "train.csv").is_file():
        return root
    logger.info("no --data / --clip: generating %d synthetic reef frames into %s (once)", frames, root)
    generate_dataset(root, videos=1, frames=frames, width=1280, height=720, seed=seed, workers=1, overwrite=True)
    return root

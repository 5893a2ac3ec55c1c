"""Write a synthetic dataset in the Kaggle layout: train.csv, train_images/, videos/*.mp4 and synth.json."""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import os
import pickle
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from train.synth.config import GENERATOR_VERSION, SynthConfig
from train.synth.plan import VideoLayout, plan_dataset
from train.synth.render import build_assets, render_frame

logger = logging.getLogger(__name__)

CSV_COLUMNS = ("video_id", "sequence", "video_frame", "sequence_frame", "image_id", "annotations")


@dataclass
class VideoSummary:
    video_id: int
    frames: int
    sequences: list[int]
    boxes: int = 0
    empty_frames: int = 0
    distinct_starfish: int = 0  # track ids with at least one written box: the truth for unique counting
    placed_starfish: int = 0  # starfish laid on the floor (some may never be visible enough to get a box)


@dataclass
class SynthSummary:
    out_dir: Path
    config: SynthConfig
    videos: list[VideoSummary] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def frames(self) -> int:
        return sum(v.frames for v in self.videos)

    @property
    def boxes(self) -> int:
        return sum(v.boxes for v in self.videos)

    @property
    def empty_frames(self) -> int:
        return sum(v.empty_frames for v in self.videos)

    @property
    def empty_fraction(self) -> float:
        return self.empty_frames / self.frames if self.frames else 0.0

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        """The content of synth.json (no timings, so the file is identical for identical seeds)."""
        return {
            "generator": "starfish-edge synthetic reef",
            "version": GENERATOR_VERSION,
            "seed": self.config.seed,
            "args": self.config.model_dump(mode="json"),
            "width": self.config.width,
            "height": self.config.height,
            "frames": self.frames,
            "boxes": self.boxes,
            "empty_frames": self.empty_frames,
            "empty_fraction": round(self.empty_fraction, 6),
            "distinct_starfish": sum(v.distinct_starfish for v in self.videos),
            "videos": [asdict(v) for v in self.videos],
        }


# Per-process cache of the video being rendered: worker processes load a video's assets once, from a pickle the
# main process wrote (spawned workers share nothing; fork is avoided because OpenCV's and BLAS's thread pools
# can deadlock a forked child).
_STATE: dict[str, Any] = {}


def _use_video(key: str, loader: Any) -> None:
    if _STATE.get("key") != key:
        _STATE.clear()
        _STATE.update(loader())
        _STATE["key"] = key


def _load_pickle(path: str) -> dict[str, Any]:
    with open(path, "rb") as handle:
        return pickle.load(handle)


def _render_and_save(job: tuple[str, int]) -> tuple[int, list[dict[str, int]], np.ndarray]:
    key, frame = job
    if _STATE.get("key") != key:
        cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would only contend
        _use_video(key, lambda: _load_pickle(key))
    rendered = render_frame(_STATE["layout"], _STATE["assets"], frame)
    path = os.path.join(_STATE["image_dir"], f"{frame}.jpg")
    if not cv2.imwrite(path, rendered.image, [cv2.IMWRITE_JPEG_QUALITY, _STATE["quality"]]):
        raise OSError(f"could not write {path}")
    return frame, rendered.annotations, rendered.image


class _Renderer:
    """Renders the frames of one video after another, in-process (workers=1) or in a pool of processes.

    With a pool, the next video's assets are built in the main process while the workers still render the
    previous one, so the two cores stay busy.
    """

    def __init__(self, workers: int, scratch: Path) -> None:
        self.workers = workers
        self.scratch = scratch
        self.pool: ProcessPoolExecutor | None = None
        if workers > 1:
            self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, layout: VideoLayout, image_dir: Path, config: SynthConfig) -> Any:
        """Start rendering a video; returns a handle for `results`."""
        state = {
            "layout": layout,
            "assets": build_assets(layout),
            "image_dir": str(image_dir),
            "quality": config.jpeg_quality,
        }
        if self.pool is None:
            return state
        key = str(self.scratch / f"video_{layout.video_id}.pickle")
        with open(key, "wb") as handle:
            pickle.dump(state, handle, protocol=pickle.HIGHEST_PROTOCOL)
        return [self.pool.submit(_render_and_save, (key, frame)) for frame in range(layout.frames)]

    def results(self, handle: Any) -> Iterator[tuple[int, list[dict[str, int]], np.ndarray]]:
        if self.pool is None:
            key = f"local-{id(handle)}"
            _use_video(key, lambda: handle)
            try:
                for frame in range(handle["layout"].frames):
                    yield _render_and_save((key, frame))
            finally:
                _STATE.clear()
            return
        for future in handle:
            yield future.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _resolve_workers(config: SynthConfig) -> int:
    if config.workers:
        return config.workers
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def generate_dataset(
    out_dir: Path | str,
    config: SynthConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = False,
    **settings: Any,
) -> SynthSummary:
    """Generate a synthetic reef dataset under `out_dir`.

    Pass either a :class:`SynthConfig` or its fields as keyword arguments (videos=, frames=, seed=, width=, ...).
    Raises FileExistsError if `out_dir` already holds a train.csv and `overwrite` is false, and pydantic's
    ValidationError (a ValueError) naming the argument for impossible settings.
    """
    if config is None:
        config = SynthConfig(**settings)
    elif settings:
        config = config.model_copy(update=settings)
        config = SynthConfig.model_validate(config.model_dump())
    out = Path(out_dir)
    if (out / "train.csv").exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a dataset (train.csv); choose another --out or overwrite")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    workers = _resolve_workers(config)
    layouts = plan_dataset(config)
    summary = SynthSummary(out_dir=out, config=config)
    rows: list[dict[str, Any]] = []
    bar = _progress(config.videos * config.frames, progress)
    with tempfile.TemporaryDirectory(prefix="synth-") as scratch:
        renderer = _Renderer(workers, Path(scratch))
        try:
            pending = renderer.submit(layouts[0], _image_dir(out, 0), config)
            for index, layout in enumerate(layouts):
                current = pending
                if index + 1 < len(layouts):
                    pending = renderer.submit(layouts[index + 1], _image_dir(out, index + 1), config)
                summary.videos.append(_write_video(out, layout, config, renderer.results(current), rows, bar))
        finally:
            renderer.close()
            if bar is not None:
                bar.close()
    with (out / "train.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    (out / "synth.json").write_text(json.dumps(summary.to_json(), indent=2) + "\n", encoding="utf-8")
    summary.seconds = time.perf_counter() - started
    logger.info(
        "wrote %d frames (%d boxes, %.0f %% empty) to %s in %.1f s (%.1f frames/s, %d workers)",
        summary.frames,
        summary.boxes,
        100 * summary.empty_fraction,
        out,
        summary.seconds,
        summary.frames_per_second,
        workers,
    )
    return summary


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", desc="synth", dynamic_ncols=True)


def _image_dir(out: Path, video_id: int) -> Path:
    path = out / "train_images" / f"video_{video_id}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_video(
    out: Path,
    layout: VideoLayout,
    config: SynthConfig,
    frames: Iterator[tuple[int, list[dict[str, int]], np.ndarray]],
    rows: list[dict[str, Any]],
    bar: Any,
) -> VideoSummary:
    video_id = layout.video_id
    summary = VideoSummary(
        video_id=video_id,
        frames=layout.frames,
        sequences=[s.sequence_id for s in layout.sequences],
        placed_starfish=len(layout.tracks),
    )
    writer = None
    if config.write_video:
        (out / "videos").mkdir(exist_ok=True)
        video_path = out / "videos" / f"video_{video_id}.mp4"
        writer = cv2.VideoWriter(
            str(video_path), cv2.VideoWriter_fourcc(*"mp4v"), config.fps, (config.width, config.height)
        )
        if not writer.isOpened():
            raise RuntimeError(f"OpenCV cannot open an mp4v writer for {video_path}")
    seen_tracks: set[int] = set()
    try:
        for frame, annotations, image in frames:
            seq = layout.sequence_at(frame)
            rows.append(
                {
                    "video_id": video_id,
                    "sequence": seq.sequence_id,
                    "video_frame": frame,
                    "sequence_frame": frame - seq.start,
                    "image_id": f"{video_id}-{frame}",
                    "annotations": str(annotations),
                }
            )
            summary.boxes += len(annotations)
            summary.empty_frames += not annotations
            seen_tracks.update(a["track_id"] for a in annotations)
            if writer is not None:
                writer.write(image)
            if bar is not None:
                bar.update(1)
    finally:
        if writer is not None:
            writer.release()
    summary.distinct_starfish = len(seen_tracks)
    return summary

"""Write an out-of-distribution validation set in the Kaggle layout: train.csv, train_images/, videos/, synth.json.

`synth.json` has the same fields the project's readers use from the generator's (`width`, `height`,
`videos[].distinct_starfish`, ...) plus `"purpose": "validation-only"`, so the previews, the demo and the
unique-count measures read it unchanged.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2

from train.ood.config import RENDERER_VERSION, OodConfig
from train.ood.render import render_frame
from train.ood.scene import VideoPlan, build_sequence, plan_dataset

logger = logging.getLogger(__name__)

CSV_COLUMNS = ("video_id", "sequence", "video_frame", "sequence_frame", "image_id", "annotations")
PURPOSE = "validation-only"


@dataclass
class VideoSummary:
    video_id: int
    frames: int
    sequences: list[int]
    boxes: int = 0
    empty_frames: int = 0
    distinct_starfish: int = 0  # track ids with at least one written box: the truth for unique counting
    placed_starfish: int = 0
    max_boxes_per_frame: int = 0


@dataclass
class OodSummary:
    out_dir: Path
    config: OodConfig
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
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        """The content of synth.json (no timings, so identical seeds give identical files)."""
        frames = self.frames
        return {
            "generator": "starfish-edge out-of-distribution validation renderer (train.ood)",
            "purpose": PURPOSE,
            "version": RENDERER_VERSION,
            "seed": self.config.seed,
            "args": self.config.model_dump(mode="json"),
            "width": self.config.width,
            "height": self.config.height,
            "frames": frames,
            "boxes": self.boxes,
            "empty_frames": self.empty_frames,
            "empty_fraction": round(self.empty_frames / frames, 6) if frames else 0.0,
            "distinct_starfish": sum(v.distinct_starfish for v in self.videos),
            "videos": [asdict(v) for v in self.videos],
        }


def is_validation_only(root: Path | str) -> bool:
    """True when `root` holds a set this renderer wrote (its synth.json says so): train code refuses it."""
    meta = Path(root) / "synth.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text(encoding="utf-8")).get("purpose") == PURPOSE
    except (ValueError, AttributeError):  # not JSON, or not an object: not ours
        return False


def generate_ood(
    out_dir: Path | str,
    config: OodConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = False,
    **settings: Any,
) -> OodSummary:
    """Render an out-of-distribution validation set under `out_dir` (for validation only: never train on it).

    Pass an :class:`OodConfig` or its fields as keywords. Raises FileExistsError if `out_dir` already holds a
    train.csv and `overwrite` is false; pydantic's ValidationError (a ValueError) for impossible settings.
    """
    config = config if config is not None else OodConfig(**settings)
    out = Path(out_dir)
    if (out / "train.csv").exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a dataset (train.csv); choose another --out or overwrite")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    summary = OodSummary(out, config)
    rows: list[dict[str, Any]] = []
    bar = _progress(config.videos * config.frames, progress)
    try:
        for plan in plan_dataset(config):
            summary.videos.append(_write_video(out, plan, config, rows, bar))
    finally:
        if bar is not None:
            bar.close()
    with (out / "train.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    (out / "synth.json").write_text(json.dumps(summary.to_json(), indent=2) + "\n", encoding="utf-8")
    summary.seconds = time.perf_counter() - started
    logger.info(
        "wrote %d out-of-distribution frames (%d boxes, %d empty) to %s in %.1f s (%.2f frames/s)",
        summary.frames,
        summary.boxes,
        summary.empty_frames,
        out,
        summary.seconds,
        summary.frames_per_second,
    )
    return summary


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm  # type: ignore[import-untyped]

    return tqdm(total=total, unit="frame", desc="ood", dynamic_ncols=True)


def _write_video(out: Path, plan: VideoPlan, config: OodConfig, rows: list[dict[str, Any]], bar: Any) -> VideoSummary:
    image_dir = out / "train_images" / f"video_{plan.video_id}"
    image_dir.mkdir(parents=True, exist_ok=True)
    summary = VideoSummary(
        plan.video_id,
        plan.frames,
        [s.sequence_id for s in plan.sequences],
        placed_starfish=sum(len(s.starfish) for s in plan.sequences),
    )
    video = None
    if config.write_video:
        (out / "videos").mkdir(exist_ok=True)
        path = out / "videos" / f"video_{plan.video_id}.mp4"
        video = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), config.fps, (config.width, config.height))
        if not video.isOpened():
            raise RuntimeError(f"OpenCV cannot open an mp4v writer for {path}")
    seen: set[int] = set()
    try:
        for seq in plan.sequences:
            assets = build_sequence(config, seq)
            for frame in range(seq.start, seq.start + seq.frames):
                rendered = render_frame(config, plan, assets, frame)
                annotations = rendered.annotations
                target = image_dir / f"{frame}.jpg"
                if not cv2.imwrite(str(target), rendered.image, [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality]):
                    raise OSError(f"could not write {target}")
                rows.append(
                    {
                        "video_id": plan.video_id,
                        "sequence": seq.sequence_id,
                        "video_frame": frame,
                        "sequence_frame": frame - seq.start,
                        "image_id": f"{plan.video_id}-{frame}",
                        "annotations": str(annotations),
                    }
                )
                summary.boxes += len(annotations)
                summary.empty_frames += not annotations
                summary.max_boxes_per_frame = max(summary.max_boxes_per_frame, len(annotations))
                seen.update(a["track_id"] for a in annotations)
                if video is not None:
                    video.write(rendered.image)
                if bar is not None:
                    bar.update(1)
    finally:
        if video is not None:
            video.release()
    summary.distinct_starfish = len(seen)
    return summary

"""Look at a dataset (real or synthetic): a contact sheet of annotated frames and summary statistics.

Both read through the project's one reader, `edge_agent.dataset.ReefDataset`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_agent.dataset import FrameRecord, ReefDataset, load_image

logger = logging.getLogger(__name__)


def dataset_image_size(root: Path) -> tuple[int, int]:
    """(width, height) of a dataset's frames: from synth.json when present, else from its first image."""
    meta = root / "synth.json"
    if meta.is_file():
        data = json.loads(meta.read_text(encoding="utf-8"))
        return int(data["width"]), int(data["height"])
    first = next(iter(sorted((root / "train_images").glob("video_*/*.jpg"))), None)
    if first is None:
        return 1280, 720  # the Kaggle frame size; the reader reports the missing images
    image = load_image(first)
    return image.shape[1], image.shape[0]


def open_dataset(root: Path | str) -> ReefDataset:
    root = Path(root)
    return ReefDataset.open(root, image_size=dataset_image_size(root), check_images="exists")


def _track_colour(track_id: int) -> tuple[int, int, int]:
    hue = (track_id * 47) % 180
    hsv = np.uint8([[[hue, 220, 255]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def pick_frames(records: list[FrameRecord], count: int) -> list[FrameRecord]:
    """Frames spread evenly over the dataset, preferring frames with starfish (empty ones fill the rest)."""
    with_boxes = [r for r in records if not r.is_empty]
    empty = [r for r in records if r.is_empty]
    chosen: list[FrameRecord] = []
    for pool in (with_boxes, empty):
        need = count - len(chosen)
        if need <= 0 or not pool:
            continue
        idx = np.unique(np.linspace(0, len(pool) - 1, min(need, len(pool))).round().astype(int))
        chosen.extend(pool[i] for i in idx)
    return sorted(chosen, key=lambda r: (r.video_id, r.video_frame))


def contact_sheet(records: list[FrameRecord], *, columns: int = 4, thumb_width: int = 480) -> np.ndarray:
    """Grid of thumbnails with ground-truth boxes (coloured by track id, labelled) and the image id."""
    if not records:
        raise ValueError("no frames to draw")
    thumbs = []
    for record in records:
        image = load_image(record.image_path)
        scale = thumb_width / image.shape[1]
        thumb = cv2.resize(image, (thumb_width, int(round(image.shape[0] * scale))), interpolation=cv2.INTER_AREA)
        tracks = record.track_ids if record.track_ids is not None else [None] * len(record.boxes)
        for box, track in zip(record.boxes, tracks, strict=True):
            x0, y0, x1, y1 = (np.asarray(box) * scale).round().astype(int)
            colour = _track_colour(int(track)) if track is not None else (0, 255, 255)
            cv2.rectangle(thumb, (x0, y0), (x1, y1), colour, 2 if thumb_width >= 400 else 1, cv2.LINE_AA)
            if track is not None:
                cv2.putText(
                    thumb, str(int(track)), (x0, max(y0 - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA
                )
        cv2.putText(
            thumb,
            f"{record.image_id}  n={len(record.boxes)}",
            (6, 16),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
        thumbs.append(thumb)
    height = max(t.shape[0] for t in thumbs)
    rows = []
    for start in range(0, len(thumbs), columns):
        row = [np.pad(t, ((0, height - t.shape[0]), (0, 0), (0, 0))) for t in thumbs[start : start + columns]]
        row += [np.zeros_like(row[0])] * (columns - len(row))
        rows.append(np.hstack(row))
    return np.vstack(rows)


def write_preview(
    root: Path | str, out: Path | str, *, frames: int = 12, columns: int = 4, thumb_width: int = 480
) -> Path:
    """Write a contact sheet (PNG or JPEG by extension) of `frames` annotated frames of the dataset."""
    dataset = open_dataset(root)
    sheet = contact_sheet(pick_frames(dataset.records, frames), columns=columns, thumb_width=thumb_width)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_PNG_COMPRESSION, 9] if out.suffix.lower() == ".png" else [cv2.IMWRITE_JPEG_QUALITY, 90]
    if not cv2.imwrite(str(out), sheet, params):
        raise OSError(f"could not write {out} (unsupported extension?)")
    return out


def dataset_statistics(root: Path | str) -> dict[str, Any]:
    """The reader's statistics plus, per video: frames, boxes, empty fraction and distinct track ids."""
    dataset = open_dataset(root)
    stats: dict[str, Any] = dataset.stats()
    per_video: dict[str, Any] = {}
    for video in dataset.groups("video_id"):
        records = [r for r in dataset.records if r.video_id == video]
        tracks = {int(t) for r in records if r.track_ids is not None for t in r.track_ids}
        empty = sum(r.is_empty for r in records)
        per_video[str(video)] = {
            "frames": len(records),
            "sequences": len({r.sequence for r in records}),
            "boxes": int(sum(len(r.boxes) for r in records)),
            "empty_fraction": empty / len(records) if records else 0.0,
            "distinct_tracks": len(tracks),
            "max_boxes_per_frame": max((len(r.boxes) for r in records), default=0),
        }
    stats["per_video"] = per_video
    stats["sequences"] = len(dataset.groups("sequence"))
    stats["reader"] = dataset.report.summary()
    return stats

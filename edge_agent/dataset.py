"""Reader for the Kaggle "Help Protect the Great Barrier Reef" layout (real and synthetic alike).

``train.csv`` (video_id, sequence, video_frame, sequence_frame, image_id, annotations) plus
``train_images/video_{video_id}/{video_frame}.jpg``. Rows are parsed and validated up front (cheap), images are
only *checked* up front (exists, JPEG markers) and decoded lazily: the real set is 23,501 frames, ~65 GB decoded.

Bad rows are skipped and counted with their row named; a file with missing columns is an error. Problems are
summarised in one log line, not one line per frame.

Torch-free: the training data module, the benchmarks and the edge demo all read through it.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from edge_agent.annotations import AnnotationError, clip_boxes, parse_annotations, xywh_to_xyxy

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("video_id", "sequence", "video_frame", "sequence_frame", "image_id", "annotations")
DEFAULT_IMAGE_SIZE = (1280, 720)
SplitBy = Literal["video_id", "sequence"]
SPLIT_KEYS: tuple[str, ...] = ("video_id", "sequence")
ImageCheck = Literal["none", "exists", "header"]


class DatasetError(ValueError):
    """The dataset as a whole cannot be read (missing file, missing columns, empty split)."""


class ImageDecodeError(OSError):
    """An image file exists but cannot be decoded."""


@dataclass(frozen=True)
class FrameRecord:
    """One annotated frame; boxes are xyxy float32 in source pixels, already clipped and filtered."""

    video_id: int
    sequence: int
    video_frame: int
    sequence_frame: int
    image_id: str
    image_path: Path
    boxes: np.ndarray
    track_ids: np.ndarray | None = None

    @property
    def is_empty(self) -> bool:
        return len(self.boxes) == 0


@dataclass
class ReadReport:
    """What the reader had to skip or repair, so nothing disappears silently."""

    rows: int = 0
    frames: int = 0
    boxes: int = 0
    skipped_rows: list[str] = field(default_factory=list)
    dropped_boxes: int = 0
    missing_images: list[str] = field(default_factory=list)
    undecodable_images: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.frames} frames with {self.boxes} boxes from {self.rows} rows; "
            f"skipped {len(self.skipped_rows)} bad rows, {len(self.missing_images)} missing and "
            f"{len(self.undecodable_images)} undecodable images; dropped {self.dropped_boxes} degenerate boxes"
        )

    @property
    def clean(self) -> bool:
        return not (self.skipped_rows or self.missing_images or self.undecodable_images or self.dropped_boxes)


def load_image(path: Path) -> np.ndarray:
    """Decode one frame as BGR uint8, or raise :class:`ImageDecodeError` naming the file."""
    data = np.fromfile(str(path), dtype=np.uint8) if Path(path).is_file() else None
    if data is None:
        raise ImageDecodeError(f"image not found: {path}")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ImageDecodeError(f"cannot decode image: {path}")
    return image


def _jpeg_looks_complete(path: Path) -> bool:
    """Cheap check (two small reads) that catches empty, truncated and non-JPEG files without decoding."""
    try:
        size = path.stat().st_size
        if size < 4:
            return False
        with path.open("rb") as handle:
            head = handle.read(2)
            handle.seek(-2, 2)
            tail = handle.read(2)
    except OSError:
        return False
    # A complete JPEG starts with SOI and ends with EOI; a truncated copy (the usual corruption) loses its EOI.
    return head == b"\xff\xd8" and tail == b"\xff\xd9"


class ReefDataset:
    """An indexed dataset: validated rows, cheap image checks, lazy decoding."""

    def __init__(self, root: Path, records: list[FrameRecord], report: ReadReport) -> None:
        self.root = root
        self.records = records
        self.report = report

    @classmethod
    def open(
        cls,
        root: Path | str,
        *,
        image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
        check_images: ImageCheck = "header",
        csv_name: str = "train.csv",
    ) -> ReefDataset:
        """Read ``root/train.csv`` and index its frames.

        Args:
            root: dataset directory holding ``train.csv`` and ``train_images/``.
            image_size: (width, height) of every frame, used to clip boxes without decoding images.
            check_images: ``header`` checks that each JPEG exists and is complete, ``exists`` only that it exists,
                ``none`` trusts the CSV (fastest; undecodable files then surface as :class:`ImageDecodeError`).
        """
        root = Path(root)
        csv_path = root / csv_name
        if not csv_path.is_file():
            raise DatasetError(f"no {csv_name} in {root}")
        width, height = image_size
        report = ReadReport()
        records: list[FrameRecord] = []
        with csv_path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(f"{csv_path} lacks column(s) {', '.join(missing)}; found {reader.fieldnames}")
            for line_number, row in enumerate(reader, start=2):
                report.rows += 1
                record = _parse_row(row, line_number, root, width, height, report)
                if record is None:
                    continue
                if not _image_ok(record.image_path, check_images, report):
                    continue
                records.append(record)
        report.frames = len(records)
        report.boxes = sum(len(r.boxes) for r in records)
        log = logger.info if report.clean else logger.warning
        log("%s: %s", root, report.summary())
        return cls(root, records, report)

    def __len__(self) -> int:
        return len(self.records)

    def split(self, by: SplitBy, val: Iterable[int]) -> tuple[list[FrameRecord], list[FrameRecord]]:
        """Split into (train, val) by whole videos or whole sequences, never by frame (adjacent frames leak)."""
        if by not in SPLIT_KEYS:
            raise DatasetError(f"split by {by!r} is not offered; choose one of {', '.join(SPLIT_KEYS)}")
        val_ids = set(val)
        available = {getattr(r, by) for r in self.records}
        unknown = val_ids - available
        if unknown:
            raise DatasetError(f"validation {by} {sorted(unknown)} not in dataset (have {sorted(available)})")
        train = [r for r in self.records if getattr(r, by) not in val_ids]
        held_out = [r for r in self.records if getattr(r, by) in val_ids]
        for name, part in (("train", train), ("validation", held_out)):
            if not part:
                raise DatasetError(f"{name} split by {by} with val={sorted(val_ids)} is empty")
        return train, held_out

    def groups(self, by: SplitBy) -> list[int]:
        if by not in SPLIT_KEYS:
            raise DatasetError(f"unknown grouping {by!r}; choose one of {', '.join(SPLIT_KEYS)}")
        return sorted({getattr(r, by) for r in self.records})

    def stats(self) -> dict:
        """Frames, boxes, empty fraction and box-size percentiles, overall and per video."""
        return dataset_stats(self.records)


def dataset_stats(records: Sequence[FrameRecord]) -> dict:
    sides = np.concatenate(
        [np.sqrt((r.boxes[:, 2] - r.boxes[:, 0]) * (r.boxes[:, 3] - r.boxes[:, 1])) for r in records if len(r.boxes)]
        or [np.zeros(0)]
    )
    per_video: Counter[int] = Counter(r.video_id for r in records)
    empty = sum(r.is_empty for r in records)
    percentiles = (0, 5, 25, 50, 75, 95, 100)
    return {
        "frames": len(records),
        "boxes": int(sum(len(r.boxes) for r in records)),
        "empty_frames": int(empty),
        "empty_fraction": float(empty / len(records)) if records else 0.0,
        "box_side_px_percentiles": (
            {str(p): float(np.percentile(sides, p)) for p in percentiles} if sides.size else {}
        ),
        "frames_per_video": {str(k): v for k, v in sorted(per_video.items())},
    }


def _parse_row(
    row: dict[str, str], line_number: int, root: Path, width: int, height: int, report: ReadReport
) -> FrameRecord | None:
    where = f"{line_number} (image_id={row.get('image_id')!r})"
    try:
        ids = {key: _parse_int(row.get(key), key) for key in ("video_id", "sequence", "video_frame", "sequence_frame")}
        items = parse_annotations(row.get("annotations") or "", row=where)
    except (AnnotationError, ValueError) as exc:
        # AnnotationError already names the row; the integer parser does not.
        message = str(exc) if isinstance(exc, AnnotationError) else f"row {where}: {exc}"
        report.skipped_rows.append(message)
        if len(report.skipped_rows) <= 5:  # the rest are in the report, not one log line each
            logger.warning("skipping %s", message)
        return None
    xywh = np.array([[b["x"], b["y"], b["width"], b["height"]] for b in items], dtype=np.float32).reshape(-1, 4)
    boxes, keep = clip_boxes(xywh_to_xyxy(xywh), width, height)
    report.dropped_boxes += int((~keep).sum())
    track_ids = None
    if items and all("track_id" in b for b in items):
        track_ids = np.array([b["track_id"] for b in items], dtype=np.int64)[keep]
    elif not items:
        track_ids = np.zeros(0, dtype=np.int64)
    image_path = root / "train_images" / f"video_{ids['video_id']}" / f"{ids['video_frame']}.jpg"
    return FrameRecord(
        video_id=ids["video_id"],
        sequence=ids["sequence"],
        video_frame=ids["video_frame"],
        sequence_frame=ids["sequence_frame"],
        image_id=row.get("image_id") or f"{ids['video_id']}-{ids['video_frame']}",
        image_path=image_path,
        boxes=boxes,
        track_ids=track_ids,
    )


def _parse_int(value: str | None, name: str) -> int:
    if value is None or value.strip() == "":
        raise ValueError(f"{name} is empty")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} is not an integer: {value!r}") from None


def _image_ok(path: Path, check: ImageCheck, report: ReadReport) -> bool:
    if check == "none":
        return True
    if not path.is_file():
        report.missing_images.append(str(path))
        return False
    if check == "header" and not _jpeg_looks_complete(path):
        report.undecodable_images.append(str(path))
        return False
    return True

"""COCO labels (what CVAT and Label Studio export) of frames harvested from devices -> a Kaggle-layout dataset root.

The agent's snapshots are plain JPEG frames; a labelling tool exports their boxes as COCO JSON
(``images`` / ``annotations`` / ``categories``, ``bbox`` = [x, y, width, height] in pixels, top-left origin). This
module checks that file completely *before* writing anything and then writes ``train.csv`` and
``train_images/video_{id}/{frame}.jpg`` exactly as `edge_agent.dataset.ReefDataset` (and so `starfish train`,
`starfish retrain`) reads them:

* one video per folder of ``file_name`` (``reef-01/cam0/….jpg`` -> one video): a camera's frames stay together,
  so a split by video never puts near-duplicate neighbours on both sides; frames in name order (the agent names
  snapshots by time), ``video_frame`` = their index; one sequence per video.
* every image in the file becomes a frame, those without annotations as empty frames (negatives are most of the
  real data and the model needs them).
* JPEG bytes are copied unchanged (no second compression); other formats are encoded once as JPEG.

Refused, each with one line naming the problem (`CocoImportError`): JSON that does not parse or lacks the COCO
lists, an image file that is missing or unreadable or whose size differs from what the JSON says, images of
different sizes in one import, a box outside its image (beyond a half-pixel rounding allowance) or without area,
an annotation of an image or category the file does not list, and a category that is not a starfish name
(``--category`` accepts more names).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from edge_agent.annotations import format_annotations

logger = logging.getLogger(__name__)

CSV_COLUMNS = ("video_id", "sequence", "video_frame", "sequence_frame", "image_id", "annotations")
# Names labelling tools are commonly set up with for crown-of-thorns starfish (compared case-insensitively).
DEFAULT_CATEGORIES = ("starfish", "cots", "crown-of-thorns starfish", "crown_of_thorns_starfish", "crown-of-thorns")
# Exporters write float coordinates; a box edge this far past the image border is rounding, not a labelling error.
EDGE_ALLOWANCE_PX = 0.5
METADATA_NAME = "import.json"
_JPEG_SUFFIXES = (".jpg", ".jpeg")


class CocoImportError(ValueError):
    """The COCO file or its images cannot become a dataset; the message names the file, image or annotation."""


@dataclass
class _Image:
    id: int
    file_name: str
    width: int
    height: int
    path: Path
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)


@dataclass(frozen=True)
class ImportSummary:
    root: Path
    frames: int
    boxes: int
    empty_frames: int
    videos: dict[str, int]  # source folder -> video_id
    width: int
    height: int


def _load_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CocoImportError(f"{path} is not UTF-8 text: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CocoImportError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(data, dict):
        raise CocoImportError(f"{path}: a COCO file is a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise CocoImportError(f"{path}: COCO key {key!r} must be a list (found {type(data.get(key)).__name__})")
    return data


def _int_field(entry: Any, key: str, where: str) -> int:
    if not isinstance(entry, dict):
        raise CocoImportError(f"{where} must be a JSON object, got {type(entry).__name__}")
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CocoImportError(f"{where}: {key!r} must be an integer, got {value!r}")
    return value


def _categories(data: dict[str, Any], accepted: tuple[str, ...], source: Path) -> set[int]:
    wanted = {name.strip().lower() for name in accepted}
    ids: set[int] = set()
    for i, entry in enumerate(data["categories"]):
        cid = _int_field(entry, "id", f"{source}: categories[{i}]")
        name = entry.get("name")
        if not isinstance(name, str) or name.strip().lower() not in wanted:
            raise CocoImportError(
                f"{source}: unknown category {name!r} (id {cid}); accepted: {', '.join(sorted(wanted))} "
                "(--category NAME accepts another)"
            )
        ids.add(cid)
    return ids


def _images(data: dict[str, Any], images_dir: Path, source: Path) -> dict[int, _Image]:
    images: dict[int, _Image] = {}
    for i, entry in enumerate(data["images"]):
        where = f"{source}: images[{i}]"
        image_id = _int_field(entry, "id", where)
        width, height = _int_field(entry, "width", where), _int_field(entry, "height", where)
        name = entry.get("file_name")
        if not isinstance(name, str) or not name.strip():
            raise CocoImportError(f"{where}: 'file_name' must be a non-empty string")
        relative = PurePosixPath(name.replace("\\", "/"))
        if relative.is_absolute() or ".." in relative.parts:
            raise CocoImportError(f"{where}: file_name {name!r} must be relative to --images, without '..'")
        if width <= 0 or height <= 0:
            raise CocoImportError(f"{where} ({name}): width and height must be positive, got {width}x{height}")
        if image_id in images:
            raise CocoImportError(f"{where}: image id {image_id} is listed twice")
        path = images_dir / Path(*relative.parts)
        if not path.is_file():
            raise CocoImportError(f"image {name} (id {image_id}) is missing: no file {path}")
        images[image_id] = _Image(image_id, relative.as_posix(), width, height, path)
    if not images:
        raise CocoImportError(f"{source} lists no images")
    return images


def _attach_boxes(data: dict[str, Any], images: dict[int, _Image], categories: set[int], source: Path) -> None:
    for i, entry in enumerate(data["annotations"]):
        where = f"{source}: annotations[{i}]"
        ann_id = entry.get("id", i) if isinstance(entry, dict) else i
        where = f"{where} (id {ann_id})"
        image_id = _int_field(entry, "image_id", where)
        category_id = _int_field(entry, "category_id", where)
        image = images.get(image_id)
        if image is None:
            raise CocoImportError(f"{where} refers to image id {image_id}, which the file does not list")
        if category_id not in categories:
            raise CocoImportError(f"{where} has category id {category_id}, which the file does not list")
        bbox = entry.get("bbox")
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
        ):
            raise CocoImportError(f"{where}: bbox must be [x, y, width, height] of 4 finite numbers, got {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            raise CocoImportError(f"{where} on {image.file_name}: box has no area ({w:g}x{h:g})")
        if (
            x < -EDGE_ALLOWANCE_PX
            or y < -EDGE_ALLOWANCE_PX
            or x + w > image.width + EDGE_ALLOWANCE_PX
            or y + h > image.height + EDGE_ALLOWANCE_PX
        ):
            raise CocoImportError(
                f"{where}: box [{x:g}, {y:g}, {w:g}, {h:g}] lies outside its image {image.file_name} "
                f"({image.width}x{image.height})"
            )
        x1, y1 = max(0.0, x), max(0.0, y)
        image.boxes.append((x1, y1, min(float(image.width), x + w), min(float(image.height), y + h)))


def _check_pixels(images: dict[int, _Image]) -> tuple[int, int]:
    """Every file decodes at the size the JSON states, and all share one size (the dataset reader's contract)."""
    import cv2

    sizes: dict[tuple[int, int], str] = {}
    for image in images.values():
        pixels = cv2.imread(str(image.path), cv2.IMREAD_UNCHANGED)
        if pixels is None:
            raise CocoImportError(f"image {image.file_name} (id {image.id}) is not a readable image: {image.path}")
        height, width = pixels.shape[:2]
        if (width, height) != (image.width, image.height):
            raise CocoImportError(
                f"image {image.file_name} is {width}x{height} but the COCO file says {image.width}x{image.height}"
            )
        sizes.setdefault((width, height), image.file_name)
    if len(sizes) > 1:
        listed = "; ".join(f"{w}x{h} ({name})" for (w, h), name in sorted(sizes.items()))
        raise CocoImportError(f"images of different sizes in one import: {listed}; import each size separately")
    return next(iter(sizes))


def import_coco(
    annotations: str | os.PathLike,
    images_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    categories: tuple[str, ...] = DEFAULT_CATEGORIES,
    first_video_id: int = 0,
    overwrite: bool = False,
    jpeg_quality: int = 95,
) -> ImportSummary:
    """Check ``annotations`` (a COCO JSON file) against ``images_dir`` and write a dataset root at ``out``.

    Nothing is written unless everything checks out; the root appears at once (written beside it, then renamed),
    so a reader never sees half an import. Raises `CocoImportError`; `FileExistsError` when ``out`` already holds
    a dataset and ``overwrite`` is false.
    """
    source, images_root, root = Path(annotations), Path(images_dir), Path(out)
    if not source.is_file():
        raise CocoImportError(f"COCO annotations file not found: {source}")
    if not images_root.is_dir():
        raise CocoImportError(f"images directory not found: {images_root}")
    if (root / "train.csv").exists() and not overwrite:
        raise FileExistsError(f"{root} already holds a dataset (train.csv); choose another --out or --overwrite")
    data = _load_json(source)
    accepted = _categories(data, categories, source)
    images = _images(data, images_root, source)
    _attach_boxes(data, images, accepted, source)
    width, height = _check_pixels(images)

    by_folder: dict[str, list[_Image]] = defaultdict(list)
    for image in images.values():
        by_folder[str(PurePosixPath(image.file_name).parent)].append(image)
    videos = {folder: first_video_id + i for i, folder in enumerate(sorted(by_folder))}

    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        rows = _write(staging, by_folder, videos, jpeg_quality)
        meta = {
            "source": "coco",
            "annotations": str(source),
            "images": str(images_root),
            "width": width,
            "height": height,
            "videos": {str(v): folder for folder, v in videos.items()},
            "frames": len(rows),
        }
        (staging / METADATA_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if root.exists():
            shutil.rmtree(root)
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    boxes = sum(len(i.boxes) for i in images.values())
    empty = sum(not i.boxes for i in images.values())
    logger.info("imported %d frames (%d boxes, %d empty) from %s into %s", len(rows), boxes, empty, source, root)
    return ImportSummary(root, len(rows), boxes, empty, videos, width, height)


def _write(
    root: Path, by_folder: dict[str, list[_Image]], videos: dict[str, int], jpeg_quality: int
) -> list[dict[str, Any]]:
    import cv2

    rows: list[dict[str, Any]] = []
    for folder, video_id in videos.items():
        directory = root / "train_images" / f"video_{video_id}"
        directory.mkdir(parents=True)
        for frame, image in enumerate(sorted(by_folder[folder], key=lambda i: i.file_name)):
            target = directory / f"{frame}.jpg"
            if image.path.suffix.lower() in _JPEG_SUFFIXES:
                shutil.copyfile(image.path, target)
            elif not cv2.imwrite(str(target), cv2.imread(str(image.path)), [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]):
                raise CocoImportError(f"could not write {target} from {image.path}")
            boxes = np.array(image.boxes, dtype=np.float64).reshape(-1, 4)
            rows.append(
                {
                    "video_id": video_id,
                    "sequence": video_id,
                    "video_frame": frame,
                    "sequence_frame": frame,
                    "image_id": f"{video_id}-{frame}",
                    "annotations": format_annotations(boxes),
                }
            )
    with (root / "train.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return rows

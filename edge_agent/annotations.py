"""The one module that turns Kaggle annotation strings into clean pixel boxes.

Parse (safely: ``ast.literal_eval``, never ``eval``), validate, convert xywh to xyxy, clip to the image and drop
boxes that clipping leaves degenerate. Empty frames (``[]``) are normal: ~80 % of the real set.
Torch-free: the benchmarks and the edge demo read ground truth with it too.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any

import numpy as np

REQUIRED_KEYS = ("x", "y", "width", "height")
# Boxes whose width or height is at most this many pixels after clipping carry no learnable signal.
MIN_BOX_SIDE_PX = 1.0


class AnnotationError(ValueError):
    """An annotation string that is not a list of well-formed box dicts; the message names the row."""


def parse_annotations(text: str, *, row: str = "?") -> list[dict[str, int]]:
    """Parse one ``annotations`` cell into a list of ``{'x', 'y', 'width', 'height'[, 'track_id']}`` dicts.

    Raises:
        AnnotationError: the cell is not a Python-literal list of dicts with numeric, non-negative-size fields.
    """
    if not isinstance(text, str):
        raise AnnotationError(f"row {row}: annotations must be a string, got {type(text).__name__}")
    stripped = text.strip()
    if stripped == "":
        return []
    try:
        value = ast.literal_eval(stripped)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise AnnotationError(f"row {row}: annotations are not a Python literal ({exc.__class__.__name__})") from None
    if not isinstance(value, list):
        raise AnnotationError(f"row {row}: annotations must be a list of dicts, got {type(value).__name__}")
    return [_validate_box(item, row=row, index=i) for i, item in enumerate(value)]


def _validate_box(item: Any, *, row: str, index: int) -> dict[str, int]:
    if not isinstance(item, Mapping):
        raise AnnotationError(f"row {row}: box {index} must be a dict, got {type(item).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in item]
    if missing:
        raise AnnotationError(f"row {row}: box {index} lacks {', '.join(missing)}")
    box: dict[str, int] = {}
    for key in (*REQUIRED_KEYS, "track_id"):
        if key not in item:
            continue
        raw = item[key]
        # bool is an int subclass; True as a coordinate is a data error, not 1.
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not np.isfinite(raw):
            raise AnnotationError(f"row {row}: box {index} field {key!r} is not a finite number: {raw!r}")
        box[key] = int(round(raw))
    if box["width"] < 0 or box["height"] < 0:
        raise AnnotationError(f"row {row}: box {index} has a negative size ({box['width']}x{box['height']})")
    return box


def xywh_to_xyxy(boxes_xywh: np.ndarray) -> np.ndarray:
    """``[N, 4]`` (x, y, width, height) -> ``[N, 4]`` (x1, y1, x2, y2), float32."""
    boxes = np.asarray(boxes_xywh, dtype=np.float32).reshape(-1, 4)
    out = boxes.copy()
    out[:, 2] = boxes[:, 0] + boxes[:, 2]
    out[:, 3] = boxes[:, 1] + boxes[:, 3]
    return out


def clip_boxes(boxes_xyxy: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip xyxy boxes to ``[0, width] x [0, height]``; drop those with a side <= ``MIN_BOX_SIDE_PX`` after clipping.

    Returns:
        The kept, clipped boxes and a boolean mask over the input saying which were kept.
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4).copy()
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, width)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, height)
    keep = ((boxes[:, 2] - boxes[:, 0]) > MIN_BOX_SIDE_PX) & ((boxes[:, 3] - boxes[:, 1]) > MIN_BOX_SIDE_PX)
    return boxes[keep], keep


def format_annotations(boxes_xyxy: np.ndarray, track_ids: np.ndarray | None = None) -> str:
    """The inverse of :func:`parse_annotations`: xyxy boxes to a Kaggle ``annotations`` cell."""
    items = []
    for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)):
        item = {"x": int(round(x1)), "y": int(round(y1)), "width": int(round(x2 - x1)), "height": int(round(y2 - y1))}
        if track_ids is not None:
            item["track_id"] = int(track_ids[i])
        items.append(item)
    return repr(items)

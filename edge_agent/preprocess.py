"""The one place where frames become model input and model output becomes boxes in source pixels.

This is the input/output contract of every exported detector (ONNX or TensorRT), shared by the edge agent,
the export checks (parity, calibration) and the benchmarks, so that no back end carries its own copy:

* input tensor ``images``: float32, shape ``[1, 3, H, W]``, RGB, values in ``[0, 1]``. ImageNet mean/std
  normalisation happens *inside* the graph (torchvision's ``GeneralizedRCNNTransform`` is exported with it).
* resize rule ``letterbox-top-left``: the frame is scaled by ``s = min(W / w, H / h)`` keeping its aspect ratio,
  placed at the top-left corner and the rest padded with zeros. Anchoring at the top-left makes the inverse a
  single division by ``s`` with no offset to get wrong.
* outputs: ``boxes`` float32 ``[N, 4]`` (x1, y1, x2, y2 in input-tensor pixels), ``scores`` float32 ``[N]``,
  ``labels`` int64 ``[N]``. ``N`` may be zero.

Torch-free on purpose: it runs on the Jetson.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import cv2
import numpy as np

INPUT_NAME = "images"
OUTPUT_NAMES = ("boxes", "scores", "labels")
# Final: the manifest schema holds these as Literal types, and Final keeps them literal for the type checker.
RESIZE_RULE: Final = "letterbox-top-left"
COLOUR_ORDER: Final = "RGB"


@dataclass(frozen=True)
class Letterbox:
    """How a source frame was fitted into the model input, so boxes can be mapped back."""

    scale: float
    source_width: int
    source_height: int


def fit_to_input(frame_bgr: np.ndarray, input_width: int, input_height: int) -> np.ndarray:
    """The frame scaled by ``min(W / w, H / h)`` (aspect kept), before padding: what `letterbox` places top-left.
    A frame already of this size is placed as it is (scale 1), so golden frames are stored this way."""
    source_height, source_width = frame_bgr.shape[:2]
    scale = min(input_width / source_width, input_height / source_height)
    resized_width = max(1, min(input_width, round(source_width * scale)))
    resized_height = max(1, min(input_height, round(source_height * scale)))
    if (resized_width, resized_height) == (source_width, source_height):
        return frame_bgr
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    return cv2.resize(frame_bgr, (resized_width, resized_height), interpolation=interpolation)


def letterbox(frame_bgr: np.ndarray, input_width: int, input_height: int) -> tuple[np.ndarray, Letterbox]:
    """Fit a BGR uint8 frame into ``input_height x input_width`` (top-left anchored) and return the NCHW tensor."""
    if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 BGR frame, got shape {frame_bgr.shape}")
    source_height, source_width = frame_bgr.shape[:2]
    scale = min(input_width / source_width, input_height / source_height)
    resized = fit_to_input(frame_bgr, input_width, input_height)
    resized_height, resized_width = resized.shape[:2]
    canvas = np.zeros((input_height, input_width, 3), dtype=np.uint8)
    canvas[:resized_height, :resized_width] = resized
    rgb = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)
    tensor = np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32)
    tensor *= 1.0 / 255.0
    return tensor, Letterbox(scale=scale, source_width=source_width, source_height=source_height)


def boxes_to_source(boxes: np.ndarray, fit: Letterbox) -> np.ndarray:
    """Map ``[N, 4]`` xyxy boxes from input-tensor pixels back to source pixels, clipped to the frame."""
    if boxes.size == 0:
        return np.zeros((0, 4), dtype=np.float32)
    mapped = boxes.astype(np.float32) / np.float32(fit.scale)
    mapped[:, [0, 2]] = np.clip(mapped[:, [0, 2]], 0, fit.source_width)
    mapped[:, [1, 3]] = np.clip(mapped[:, [1, 3]], 0, fit.source_height)
    return mapped


# A box keeps at least this share of its area inside the real image, or it was found in the letterbox padding.
MIN_IN_IMAGE_FRACTION = 0.5


def in_image(boxes: np.ndarray, fit: Letterbox) -> np.ndarray:
    """Mask of ``[N, 4]`` input-tensor boxes that lie mostly on the real image, not in the letterbox padding.

    The padding (right and bottom strips, all zeros) holds no pixels of the scene, so a box there is an artefact of
    the model; clipping alone would keep it as a zero-width box on the frame edge and it would be counted.
    """
    if boxes.size == 0:
        return np.zeros(0, dtype=bool)
    boxes = boxes.astype(np.float32).reshape(-1, 4)
    image_w, image_h = fit.source_width * fit.scale, fit.source_height * fit.scale
    width = np.clip(boxes[:, 2] - boxes[:, 0], 0, None)
    height = np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    inside_w = np.clip(np.minimum(boxes[:, 2], image_w) - np.maximum(boxes[:, 0], 0), 0, None)
    inside_h = np.clip(np.minimum(boxes[:, 3], image_h) - np.maximum(boxes[:, 1], 0), 0, None)
    area = width * height
    inside = inside_w * inside_h
    # At least one source pixel wide and high once mapped back, and mostly inside the image.
    big_enough = (inside_w / fit.scale >= 1.0) & (inside_h / fit.scale >= 1.0)
    return big_enough & (inside >= MIN_IN_IMAGE_FRACTION * np.maximum(area, 1e-9))


def postprocess(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, fit: Letterbox, score_threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw model outputs -> (boxes in source pixels, scores, labels) at or above ``score_threshold``, with boxes in
    the letterbox padding dropped and the rest clipped to the frame. Every back end and benchmark uses this."""
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    keep = (scores >= score_threshold) & in_image(boxes, fit)
    return boxes_to_source(boxes[keep], fit), scores[keep], labels[keep]

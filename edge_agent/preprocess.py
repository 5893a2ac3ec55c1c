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

import cv2
import numpy as np

INPUT_NAME = "images"
OUTPUT_NAMES = ("boxes", "scores", "labels")
RESIZE_RULE = "letterbox-top-left"
COLOUR_ORDER = "RGB"


@dataclass(frozen=True)
class Letterbox:
    """How a source frame was fitted into the model input, so boxes can be mapped back."""

    scale: float
    source_width: int
    source_height: int


def letterbox(frame_bgr: np.ndarray, input_width: int, input_height: int) -> tuple[np.ndarray, Letterbox]:
    """Fit a BGR uint8 frame into ``input_height x input_width`` (top-left anchored) and return the NCHW tensor."""
    if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 BGR frame, got shape {frame_bgr.shape}")
    source_height, source_width = frame_bgr.shape[:2]
    scale = min(input_width / source_width, input_height / source_height)
    resized_width = max(1, min(input_width, round(source_width * scale)))
    resized_height = max(1, min(input_height, round(source_height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    resized = cv2.resize(frame_bgr, (resized_width, resized_height), interpolation=interpolation)
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

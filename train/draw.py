"""Draw boxes on frames (W&B example images, `starfish train predict`)."""

from __future__ import annotations

import cv2
import numpy as np


def draw_boxes(
    image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray | None = None,
    colour: tuple[int, int, int] = (255, 0, 0),
    thickness: int = 2,
) -> np.ndarray:
    """Return a copy of ``image`` (uint8, any channel order: ``colour`` is in the same order) with xyxy boxes."""
    canvas = np.ascontiguousarray(image).copy()
    for i, box in enumerate(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)):
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness)
        if scores is not None and i < len(scores):
            cv2.putText(
                canvas,
                f"{float(scores[i]):.2f}",
                (x1, max(12, y1 - 4)),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.45,
                colour,
                1,
                cv2.LINE_AA,
            )
    return canvas

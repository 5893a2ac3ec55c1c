"""`export.checks.predict`: every record's frame goes through the runner at the model's input size, boxes come back
in source pixels, and an optional transform changes the pixels (a probe's photometric change), never the boxes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.dataset import FrameRecord
from export.checks import predict


def _records(tmp_path: Path) -> list[FrameRecord]:
    records = []
    for i, level in enumerate((40, 200)):
        path = tmp_path / f"frame_{i}.png"
        cv2.imwrite(str(path), np.full((360, 640, 3), level, np.uint8))
        boxes = np.array([[10, 20, 110, 120]], np.float32)
        records.append(FrameRecord(0, 0, i, i, f"0-{i}", path, boxes))
    return records


def _brightness_runner(tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One fixed box at input scale, scored by the mean pixel it was shown (what the model saw, in [0, 1])."""
    assert tensor.shape == (1, 3, 180, 320)
    return np.array([[5, 10, 55, 60]], np.float32), np.array([tensor.mean()], np.float32), np.array([1], np.int64)


def test_predict_maps_boxes_to_source_pixels_and_keeps_the_truth(tmp_path: Path) -> None:
    records = _records(tmp_path)
    predictions, truths = predict(_brightness_runner, records, 320, 180)
    assert [float(s[0]) for _, s in predictions] == pytest.approx([40 / 255, 200 / 255], abs=1e-6)
    for (boxes, _), truth in zip(predictions, truths, strict=True):
        np.testing.assert_allclose(boxes, [[10, 20, 110, 120]])
        np.testing.assert_array_equal(truth, [[10, 20, 110, 120]])


def test_transform_changes_the_pixels_the_model_sees_but_not_the_boxes(tmp_path: Path) -> None:
    records = _records(tmp_path)
    inverted, truths = predict(_brightness_runner, records, 320, 180, transform=lambda image: 255 - image)
    assert [float(s[0]) for _, s in inverted] == pytest.approx([215 / 255, 55 / 255], abs=1e-6)
    np.testing.assert_allclose(inverted[0][0], [[10, 20, 110, 120]])
    np.testing.assert_array_equal(truths[1], records[1].boxes)

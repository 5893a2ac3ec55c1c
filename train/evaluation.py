"""Evaluate a detector on held-out frames: competition F2 (+ best threshold), per-IoU F2, COCO mAP, frames/s.

Timing is honest (STYLE habit 11): inference mode, warm-up frames excluded, CUDA synchronised before the clock
stops, decoding and resizing outside the timed region.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

from edge_agent import metrics as reef_metrics
from edge_agent.dataset import FrameRecord, load_image
from train.module import operating_point, summarise_predictions
from train.transforms import resize_to_working

logger = logging.getLogger(__name__)

EVALUATION_SCHEMA_VERSION = 1


def working_sizes(model: torch.nn.Module) -> tuple[int, int]:
    """(min_size, max_size) the detector's own transform resizes to."""
    transform = model.transform
    min_size = transform.min_size[-1] if isinstance(transform.min_size, (tuple, list)) else transform.min_size
    return int(min_size), int(transform.max_size)


def to_tensor(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0).to(device)


def predict_bgr(model: torch.nn.Module, frame_bgr: np.ndarray, device: torch.device | str = "cpu") -> tuple:
    """Predict one BGR frame; returns (boxes [N,4] in source pixels, scores [N])."""
    min_size, max_size = working_sizes(model)
    rgb = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
    image, _, scale = resize_to_working(rgb, np.zeros((0, 4), np.float32), min_size, max_size)
    with torch.inference_mode():
        out = model([to_tensor(image, torch.device(device))])[0]
    return out["boxes"].cpu().numpy().reshape(-1, 4) / scale, out["scores"].cpu().numpy().reshape(-1)


def evaluate(
    model: torch.nn.Module,
    records: Sequence[FrameRecord],
    *,
    score_threshold: float | None = None,
    device: torch.device | str = "cpu",
    warmup: int = 2,
) -> dict[str, Any]:
    """Score ``model`` on ``records`` (every frame, empty ones included) and return a JSON-ready dict.

    Keys: ``f2``/``threshold`` (best F2 and the score threshold that gives it), ``per_iou_f2``, ``map``
    (mAP@[.5:.95]), ``map_50``, ``recall_by_size`` (per box-size bucket, at the best threshold), ``frames``,
    ``frames_with_starfish``, ``boxes``, ``frames_per_second`` and, when ``score_threshold`` is given (e.g. the one
    stored in the checkpoint), ``f2_at_given_threshold``.
    """
    if not records:
        raise ValueError("nothing to evaluate: the record list is empty")
    if all(r.is_empty for r in records):
        raise ValueError(f"nothing to score: all {len(records)} frames are empty (no starfish boxes)")
    device = torch.device(device)
    model = model.to(device).eval()
    min_size, max_size = working_sizes(model)
    predictions: list[tuple[np.ndarray, np.ndarray]] = []
    truths: list[np.ndarray] = []
    timed = 0.0
    timed_frames = 0
    for i, record in enumerate(records):
        rgb = cv2.cvtColor(load_image(record.image_path), cv2.COLOR_BGR2RGB)
        image, _, scale = resize_to_working(rgb, record.boxes, min_size, max_size)
        tensor = to_tensor(image, device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = model([tensor])[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        if i >= warmup:  # the first calls allocate and pick kernels: not representative
            timed += elapsed
            timed_frames += 1
        predictions.append((out["boxes"].cpu().numpy().reshape(-1, 4) / scale, out["scores"].cpu().numpy().reshape(-1)))
        truths.append(record.boxes.reshape(-1, 4))
    result: dict[str, Any] = {"schema_version": EVALUATION_SCHEMA_VERSION}
    result.update(summarise_predictions(predictions, truths))
    result["recall_by_size"] = reef_metrics.recall_by_size(predictions, truths, result["threshold"])
    if score_threshold is not None:
        given = reef_metrics.f2_score(predictions, truths, score_threshold)
        result["f2_at_given_threshold"] = float(given.f2)
        result["given_threshold"] = float(score_threshold)
        result["at_given_threshold"] = operating_point(given, len(predictions))
    result.update(
        {
            "frames": len(records),
            "frames_with_starfish": int(sum(not r.is_empty for r in records)),
            "boxes": int(sum(len(r.boxes) for r in records)),
            "frames_per_second": float(timed_frames / timed) if timed > 0 else float("nan"),
            "device": str(device),
            "threads": int(torch.get_num_threads()),
            "input_size": [min_size, max_size],
        }
    )
    logger.info(
        "evaluated %d frames: F2 %.4f at threshold %.2f, mAP@.5 %.4f, mAP %.4f, %.2f frames/s",
        len(records),
        result["f2"],
        result["threshold"],
        result["map_50"],
        result["map"],
        result["frames_per_second"],
    )
    return result

"""Run a detector over an image, a directory of images or a video and write copies with boxes drawn."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from edge_agent.dataset import load_image
from train.draw import draw_boxes
from train.evaluation import predict_bgr

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".m4v"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


def _annotate(model: torch.nn.Module, frame: np.ndarray, threshold: float) -> tuple[np.ndarray, list[dict]]:
    boxes, scores = predict_bgr(model, frame)
    keep = scores >= threshold
    boxes, scores = boxes[keep], scores[keep]
    drawn = draw_boxes(frame, boxes, scores, colour=(0, 0, 255))  # BGR: red
    detections = [
        {"box": [round(float(v), 1) for v in box], "score": round(float(score), 4)}
        for box, score in zip(boxes, scores, strict=True)
    ]
    return drawn, detections


def predict_source(model: torch.nn.Module, source: Path, out: Path, threshold: float) -> dict[str, Any]:
    """Annotate ``source`` into ``out``; also writes ``detections.json``. Returns a small summary."""
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {}
    if source.is_file() and source.suffix.lower() in VIDEO_SUFFIXES:
        capture = cv2.VideoCapture(str(source))
        if not capture.isOpened():
            raise ValueError(f"cannot open video {source}")
        fps = capture.get(cv2.CAP_PROP_FPS) or 10.0
        writer = None
        target = out / f"{source.stem}_pred.mp4"
        index = 0
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                drawn, detections = _annotate(model, frame, threshold)
                if writer is None:
                    height, width = drawn.shape[:2]
                    writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
                writer.write(drawn)
                results[str(index)] = detections
                index += 1
        finally:
            capture.release()
            if writer is not None:
                writer.release()
        if index == 0:
            raise ValueError(f"no frames could be read from {source}")
        written = [str(target)]
    else:
        if source.is_dir():
            images = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif source.suffix.lower() in IMAGE_SUFFIXES:
            images = [source]
        else:
            raise ValueError(
                f"{source} is neither an image ({', '.join(sorted(IMAGE_SUFFIXES))}), a directory nor "
                f"a video ({', '.join(sorted(VIDEO_SUFFIXES))})"
            )
        if not images:
            raise ValueError(f"no images in {source}")
        written = []
        for path in images:
            drawn, detections = _annotate(model, load_image(path), threshold)
            target = out / f"{path.stem}_pred.jpg"
            cv2.imwrite(str(target), drawn)
            written.append(str(target))
            results[path.name] = detections
    (out / "detections.json").write_text(json.dumps({"threshold": threshold, "frames": results}, indent=1))
    count = sum(len(v) for v in results.values())
    logger.info("%d frames, %d detections at threshold %.2f -> %s", len(results), count, threshold, out)
    return {
        "frames": len(results),
        "detections": count,
        "threshold": threshold,
        "written": written[:5],
        "out": str(out),
    }

"""Golden frames at export: a few held-out frames and, per variant, what onnxruntime CPU answers on them.

The result (`edge_agent.bundle.golden.GoldenFiles`) goes to `write_bundle(golden=...)`, which names every file in
the signed manifest; the device's staging check (`edge_agent.update.check`) compares the variant it runs with the
expectations recorded here. Frames are stored as PNG at the size the model's letterbox scales them to, and the
expectations are computed from the decoded PNG — the very pixels the device will decode.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from edge_agent.bundle import GoldenFiles, VariantSource
from edge_agent.bundle.golden import GoldenDetection, golden_files
from edge_agent.dataset import FrameRecord, load_image
from edge_agent.preprocess import fit_to_input, letterbox, postprocess
from export.runners import DEFAULT_THREADS, onnx_runner

logger = logging.getLogger(__name__)

DEFAULT_GOLDEN_FRAMES = 3
# Detections are recorded down to the threshold minus this: the device's rule needs them down to the threshold.
RECORD_MARGIN = 0.1


def frames_from_records(records: Sequence[FrameRecord], count: int = DEFAULT_GOLDEN_FRAMES) -> list[np.ndarray]:
    """``count`` held-out frames (BGR), evenly spread, preferring frames with annotated objects: a golden frame
    where the model finds nothing confident checks little."""
    with_objects = [r for r in records if not r.is_empty]
    pool = with_objects if len(with_objects) >= count else list(records)
    if not pool or count <= 0:
        return []
    picks = np.unique(np.linspace(0, len(pool) - 1, num=min(count, len(pool))).round().astype(int))
    return [load_image(pool[i].image_path) for i in picks]


def random_frames(width: int, height: int, count: int = DEFAULT_GOLDEN_FRAMES, seed: int = 0) -> list[np.ndarray]:
    """Smooth random frames, for models without held-out data (the untrained demo)."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
        frames.append(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC))
    return frames


def encode_frames(frames: Sequence[np.ndarray], width: int, height: int) -> dict[str, bytes]:
    """PNG bytes by file name (``golden_<i>.png``), each frame scaled as the model's letterbox would."""
    out = {}
    for index, frame in enumerate(frames):
        ok, png = cv2.imencode(".png", fit_to_input(frame, width, height))
        if not ok:  # pragma: no cover - OpenCV always encodes uint8 BGR as PNG
            raise ValueError(f"cannot encode golden frame {index} as PNG")
        out[f"golden_{index}.png"] = png.tobytes()
    return out


def record_golden(
    frames: Mapping[str, bytes],
    variants: Mapping[str, VariantSource],
    default_threshold: float,
    width: int,
    height: int,
    *,
    threads: int = DEFAULT_THREADS,
) -> GoldenFiles:
    """Run every variant's ONNX file with onnxruntime CPU on the PNG ``frames`` and record its detections (in the
    golden image's pixels, down to its threshold minus `RECORD_MARGIN`) with its own threshold (the variant's, or
    ``default_threshold``: what the manifest's ``threshold_for`` will say)."""
    import onnxruntime as ort

    images = []
    for file, data in frames.items():
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"golden frame {file} does not decode")
        images.append(image)
    recorded: dict[str, tuple[float, float, list[list[GoldenDetection]]]] = {}
    for name, source in variants.items():
        threshold = default_threshold if source.score_threshold is None else source.score_threshold
        floor = max(0.0, threshold - RECORD_MARGIN)
        run = onnx_runner(Path(source.path), threads)
        per_frame = []
        for image in images:
            tensor, fit = letterbox(image, width, height)
            boxes, scores, labels = postprocess(*run(tensor), fit, floor)
            per_frame.append(
                [
                    GoldenDetection(
                        box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
                        score=float(score),
                        label=int(label),
                    )
                    for box, score, label in zip(boxes, scores, labels, strict=True)
                ]
            )
        recorded[name] = (threshold, floor, per_frame)
        confident = sum(d.score >= threshold for frame in per_frame for d in frame)
        logger.info("golden frames, %s: %d detections at or above its threshold %.2f", name, confident, threshold)
        if confident == 0:
            logger.warning("golden frames, %s: no detection at or above the threshold; the check compares little", name)
    return golden_files(frames, recorded, f"onnxruntime {ort.__version__} CPUExecutionProvider")

"""The staging check: does the candidate load, give the expected answers and run fast enough *on this device*?

* Load: the staged directory is verified again by the loader (signature, hashes) and a detector is built from the
  verified bytes with the agent's back-end list, exactly as the agent would.
* Golden frames: when the bundle holds ``golden.json`` (``{"frames": [{"file": "golden_0.png", "detections":
  [{"box": [x1, y1, x2, y2], "score": 0.93}]}]}``, images beside it in the bundle), every frame must give the same
  detections: as many, each matched at IoU >= `golden_iou` with a score within `golden_score_tolerance`. Without
  it the check says ``golden: "absent"`` and only requires finite output on a blank frame.
  NOTE: golden.json is not yet named by the signed manifest (the export side does not write golden frames yet),
  so it is a health check, not a trust check; the loader logs it as an unsigned extra file.
* Latency: the median of `check_runs` timed frames (after the detector's own warm-up) must stay within
  `latency_budget_factor` x the running model's median, or `latency_budget_ms` when no running model is known.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge_agent.bundle import BundleError, VerifiedBundle
from edge_agent.bundle.files import read_bundle_file
from edge_agent.detectors.base import Detector, DetectorOptions, create_detector
from edge_agent.update.config import UpdateConfig
from edge_agent.update.errors import CheckFailed

logger = logging.getLogger(__name__)

GOLDEN_NAME = "golden.json"
MAX_GOLDEN_BYTES = 1 << 20
MAX_GOLDEN_IMAGE_BYTES = 16 << 20
MAX_GOLDEN_FRAMES = 16


@dataclass
class CheckReport:
    backend: str = ""
    golden: str = "absent"  # "absent" | "matched"
    golden_frames: int = 0
    latency_ms: float = 0.0
    budget_ms: float | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "backend": self.backend,
            "golden": self.golden,
            "golden_frames": self.golden_frames,
            "latency_ms": round(self.latency_ms, 3),
            "budget_ms": self.budget_ms,
            "notes": self.notes,
        }


def check_candidate(
    bundle: VerifiedBundle,
    cfg: UpdateConfig,
    *,
    state_dir: Path,
    reference_latency_ms: float | None = None,
) -> CheckReport:
    """Run the staging check on a verified (directory) bundle; raise `CheckFailed` with the reason if it fails."""
    report = CheckReport()
    try:
        detector = create_detector(cfg.backends, bundle, None, DetectorOptions(state_dir=state_dir))
    except Exception as exc:  # noqa: BLE001 - any back-end failure means the candidate does not load here
        raise CheckFailed(f"candidate {bundle.manifest.name} v{bundle.manifest.version} does not load: {exc}") from exc
    try:
        report.backend = type(detector).__name__
        frames = _golden_frames(bundle)
        if frames:
            for index, (image, expected) in enumerate(frames):
                _match(detector.detect(image), expected, cfg, index)
            report.golden, report.golden_frames = "matched", len(frames)
            probe = frames[0][0]
        else:
            report.notes.append("no golden frames in the bundle: only a blank-frame sanity run")
            probe = np.zeros((bundle.manifest.input.height, bundle.manifest.input.width, 3), np.uint8)
            got = detector.detect(probe)
            if not (np.isfinite(got.boxes).all() and np.isfinite(got.scores).all()):
                raise CheckFailed("candidate gives non-finite boxes or scores on a blank frame")
        report.latency_ms = _median_latency(detector, probe, cfg.check_runs)
    finally:
        detector.close()
    if reference_latency_ms is not None:
        report.budget_ms = reference_latency_ms * cfg.latency_budget_factor
    elif cfg.latency_budget_ms is not None:
        report.budget_ms = cfg.latency_budget_ms
    else:
        report.notes.append("no latency budget: neither a running model's latency nor latency_budget_ms is known")
    if report.budget_ms is not None and report.latency_ms > report.budget_ms:
        raise CheckFailed(
            f"candidate takes {report.latency_ms:.1f} ms per frame (median of {cfg.check_runs}); "
            f"the budget is {report.budget_ms:.1f} ms"
        )
    logger.info("update check passed: %s", report.as_dict())
    return report


def _median_latency(detector: Detector, frame: np.ndarray, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        detector.detect(frame)
        times.append((time.perf_counter() - start) * 1000.0)
    return float(statistics.median(times))


def _golden_frames(bundle: VerifiedBundle) -> list[tuple[np.ndarray, list[dict]]]:
    if bundle.is_tar:
        raise CheckFailed("the staging check runs on the unpacked version directory, not a .tar")
    try:
        raw = read_bundle_file(bundle.root, GOLDEN_NAME, MAX_GOLDEN_BYTES)
    except FileNotFoundError:
        return []
    except BundleError as exc:
        raise CheckFailed(f"{GOLDEN_NAME}: {exc}") from exc
    try:
        spec = json.loads(raw)
        entries = spec["frames"]
        if not isinstance(entries, list) or not 0 < len(entries) <= MAX_GOLDEN_FRAMES:
            raise ValueError(f"frames must be a list of 1..{MAX_GOLDEN_FRAMES}")
        frames = []
        for entry in entries:
            data = read_bundle_file(bundle.root, str(entry["file"]), MAX_GOLDEN_IMAGE_BYTES)
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if image is None:
                raise ValueError(f"{entry['file']} is not a readable image")
            expected = [{"box": [float(v) for v in d["box"]], "score": float(d["score"])} for d in entry["detections"]]
            frames.append((image, expected))
    except (ValueError, KeyError, TypeError, FileNotFoundError, BundleError) as exc:
        raise CheckFailed(f"{GOLDEN_NAME} is unusable: {exc}") from exc
    return frames


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _match(got: object, expected: list[dict], cfg: UpdateConfig, index: int) -> None:
    boxes, scores = got.boxes, got.scores  # type: ignore[attr-defined]
    if len(scores) != len(expected):
        raise CheckFailed(f"golden frame {index}: {len(scores)} detections, expected {len(expected)}")
    unused = set(range(len(scores)))
    for want in expected:
        box = np.asarray(want["box"], np.float64)
        best = max(unused, key=lambda i: _iou(boxes[i], box), default=None)
        if best is None or _iou(boxes[best], box) < cfg.golden_iou:
            raise CheckFailed(f"golden frame {index}: no detection matches {want['box']} at IoU {cfg.golden_iou}")
        if abs(float(scores[best]) - want["score"]) > cfg.golden_score_tolerance:
            raise CheckFailed(f"golden frame {index}: score {float(scores[best]):.3f} vs expected {want['score']:.3f}")
        unused.discard(best)

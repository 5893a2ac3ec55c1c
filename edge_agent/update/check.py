"""The staging check: does the candidate load, give the expected answers and run fast enough *on this device*?

* Load: the staged directory is verified again by the loader (signature, hashes) and a detector is built from the
  verified bytes with the agent's back-end list and configured variant (`UpdateConfig.backends` / `variant`, set by
  `edge_agent.update.runtime`), exactly as the agent would.
* Golden frames: a schema-3 bundle names `golden.json` and its images in the signed manifest (`golden`), so they
  are as trusted as the model (a tampered one fails the loader's hash check). `golden.json`
  (`edge_agent.bundle.golden`) holds, per variant, what onnxruntime CPU answered on each frame at export. The check
  takes the expectations of the variant the detector actually loaded (`Detector.variant`: a CPU device may run
  `int8_cpu` where the manifest's default is `int8`) and runs that detector on every frame. With ``t`` the
  variant's recorded threshold and ``tol`` = `golden_score_tolerance`, the rule tolerates back-end noise
  (TensorRT vs onnxruntime, fp16 kernels):

  - *confident* detections score >= ``t + tol``, on either side;
  - every confident expected detection needs a detection of the same label at IoU >= `golden_iou` with
    |score difference| <= ``tol`` (one-to-one, best IoU first);
  - every confident detection of the candidate needs such a recorded one (recorded down to `min_score` <= ``t``);
  - detections within ``tol`` of the threshold (``t - tol`` .. ``t + tol``) are required neither way: they may
    cross it on one back end and not the other.

  Any miss fails the check with the frame, the variant and the detection named. No expectations for the loaded
  variant fail it too (a signed golden set that does not cover the variant is a broken export). A bundle without
  golden frames (schema 1/2, or none written) passes with ``golden: "absent"`` and only a finite-output run on a
  blank frame. What golden frames stop: a validly signed but wrong model — a bad export, a variant file that is
  not the model the expectations came from, a back end that mis-runs it here.
* Latency: the median of `check_runs` timed frames (after the detector's own warm-up) must stay within
  `latency_budget_factor` x the running model's median, or `latency_budget_ms` when no running model is known.
* Memory: the growth of this process's resident memory from loading the candidate to its last timed frame must
  stay within `memory_budget_mb` (when set), and the system must still have `min_available_mb` available with the
  candidate loaded beside the running model: through probation both stay loaded (instant rollback), so a candidate
  that only fits once the old model is gone is refused here, before the swap, not by the kernel's OOM killer after.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge_agent.bundle import BundleError, VerifiedBundle
from edge_agent.bundle.golden import GoldenDetection, GoldenExpectations
from edge_agent.detectors.base import Detections, Detector, DetectorOptions, create_detector
from edge_agent.metrics import box_iou
from edge_agent.update.config import UpdateConfig
from edge_agent.update.errors import CheckFailed

logger = logging.getLogger(__name__)


@dataclass
class CheckReport:
    backend: str = ""
    golden: str = "absent"  # "absent" | "matched"
    golden_frames: int = 0
    golden_variant: str | None = None  # whose expectations were compared
    golden_confident: int = 0  # confident expected detections that were matched
    latency_ms: float = 0.0
    budget_ms: float | None = None
    memory_mb: float = 0.0  # growth of this process's resident memory from loading and running the candidate
    available_mb: float = 0.0  # system memory still available with the candidate loaded beside the running model
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "backend": self.backend,
            "golden": self.golden,
            "golden_frames": self.golden_frames,
            "golden_variant": self.golden_variant,
            "golden_confident": self.golden_confident,
            "latency_ms": round(self.latency_ms, 3),
            "budget_ms": self.budget_ms,
            "memory_mb": round(self.memory_mb, 1),
            "available_mb": round(self.available_mb, 1),
            "notes": self.notes,
        }


def check_candidate(
    bundle: VerifiedBundle,
    cfg: UpdateConfig,
    *,
    state_dir: Path,
    reference_latency_ms: float | None = None,
) -> CheckReport:
    """Run the staging check on a verified bundle; raise `CheckFailed` with the reason if it fails."""
    report = CheckReport()
    rss_before = _rss_mb()
    try:
        detector = create_detector(cfg.backends, bundle, cfg.variant, _options(cfg, state_dir))
    except Exception as exc:  # noqa: BLE001 - any back-end failure means the candidate does not load here
        raise CheckFailed(f"candidate {bundle.manifest.name} v{bundle.manifest.version} does not load: {exc}") from exc
    try:
        report.backend = type(detector).__name__
        golden = _golden_frames(bundle)
        if golden is not None:
            spec, frames = golden
            expected = spec.variants.get(detector.variant)
            if expected is None:
                raise CheckFailed(
                    f"golden frames have no expectations for variant {detector.variant!r} (the one loaded here); "
                    f"they cover {sorted(spec.variants)}"
                )
            if abs(expected.score_threshold - bundle.manifest.threshold_for(detector.variant)) > 1e-6:
                raise CheckFailed(
                    f"golden frames of variant {detector.variant!r} were recorded at threshold "
                    f"{expected.score_threshold}; the manifest says {bundle.manifest.threshold_for(detector.variant)}"
                )
            for index, ((file, image), want) in enumerate(zip(frames, expected.detections, strict=True)):
                got = detector.detect(image, floor=max(0.0, expected.score_threshold - cfg.golden_score_tolerance))
                report.golden_confident += _match(got, want, expected.score_threshold, cfg, f"{index} ({file})")
            report.golden, report.golden_frames = "matched", len(frames)
            report.golden_variant = detector.variant
            if report.golden_confident == 0:
                report.notes.append(
                    f"golden frames hold no confident detection of {detector.variant} (score >= threshold + "
                    f"{cfg.golden_score_tolerance}): only the absence of confident detections was checked"
                )
            probe = frames[0][1]
        else:
            report.notes.append("no golden frames in the bundle: only a blank-frame sanity run")
            probe = np.zeros((bundle.manifest.input.height, bundle.manifest.input.width, 3), np.uint8)
            got = detector.detect(probe)
            if not (np.isfinite(got.boxes).all() and np.isfinite(got.scores).all()):
                raise CheckFailed("candidate gives non-finite boxes or scores on a blank frame")
        report.latency_ms = _median_latency(detector, probe, cfg.check_runs)
        report.memory_mb = _rss_mb() - rss_before
        report.available_mb = _available_mb()
    finally:
        detector.close()
    _check_memory(report, cfg)
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


def _rss_mb() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss) / 2**20


def _available_mb() -> float:
    import psutil

    return float(psutil.virtual_memory().available) / 2**20


def _check_memory(report: CheckReport, cfg: UpdateConfig) -> None:
    if cfg.memory_budget_mb is not None and report.memory_mb > cfg.memory_budget_mb:
        raise CheckFailed(
            f"loading and running the candidate grew the agent's memory by {report.memory_mb:.0f} MB; "
            f"the budget is {cfg.memory_budget_mb:.0f} MB"
        )
    if report.available_mb < cfg.min_available_mb:
        raise CheckFailed(
            f"with the candidate loaded beside the running model only {report.available_mb:.0f} MB of memory is "
            f"available; at least {cfg.min_available_mb:.0f} MB must be (both stay loaded through probation)"
        )


def _options(cfg: UpdateConfig, state_dir: Path) -> DetectorOptions:
    return DetectorOptions(threads=cfg.threads, engine_cache_dir=cfg.engine_cache_dir, state_dir=state_dir)


def _median_latency(detector: Detector, frame: np.ndarray, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        detector.detect(frame)
        times.append((time.perf_counter() - start) * 1000.0)
    return float(statistics.median(times))


def _golden_frames(bundle: VerifiedBundle) -> tuple[GoldenExpectations, list[tuple[str, np.ndarray]]] | None:
    try:
        golden = bundle.read_golden()
    except BundleError as exc:  # a hash that changed since verification, a golden.json the manifest disagrees with
        raise CheckFailed(f"golden frames unusable: {exc}") from exc
    if golden is None:
        return None
    spec, files = golden
    frames = []
    for file, data in files:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise CheckFailed(f"golden frames unusable: {file} is not a readable image")
        frames.append((file, image))
    return spec, frames


def _match(got: Detections, want: Sequence[GoldenDetection], threshold: float, cfg: UpdateConfig, frame: str) -> int:
    """Apply the module docstring's rule to one frame; return how many confident expectations matched."""
    tol, min_iou = cfg.golden_score_tolerance, cfg.golden_iou
    confident = threshold + tol
    boxes, scores, labels = got.boxes.astype(np.float64), got.scores.astype(np.float64), got.labels
    ious = box_iou(boxes, np.array([w.box for w in want], np.float64))  # [detections, expectations]

    def fits(i: int, j: int) -> bool:
        same_label = int(labels[i]) == want[j].label
        return same_label and abs(float(scores[i]) - want[j].score) <= tol and ious[i, j] >= min_iou

    unused = set(range(len(scores)))
    matched = 0
    for j in sorted((j for j, w in enumerate(want) if w.score >= confident), key=lambda j: -want[j].score):
        w = want[j]
        fitting = [i for i in unused if fits(i, j)]
        if not fitting:
            raise CheckFailed(
                f"golden frame {frame}: expected detection {[round(v, 1) for v in w.box]} (label {w.label}, score "
                f"{w.score:.3f}) not found at IoU >= {min_iou} within score {tol} ({len(scores)} detections)"
            )
        unused.discard(max(fitting, key=lambda i: ious[i, j]))
        matched += 1
    for i in range(len(scores)):
        if scores[i] >= confident and not any(fits(i, j) for j in range(len(want))):
            raise CheckFailed(
                f"golden frame {frame}: unexpected detection {[round(float(v), 1) for v in boxes[i]]} (label "
                f"{int(labels[i])}, score {float(scores[i]):.3f}) matches nothing recorded at export"
            )
    return matched

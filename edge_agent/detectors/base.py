"""The one small interface every detector back end implements, plus the registry that picks one by name.

A back end is one file, one class, registered under its name (`@register("onnxruntime")`). Optional
accelerators are guarded at import: a back end whose library is missing reports `available() -> (False, reason)`
and `create_detector` falls through to the next name in the configured order, logging why. Any other failure while
a back end loads or warms up (an unwritable engine cache, a CUDA error, a model that does not fit the input
contract) falls through the same way: it is logged, the half-built detector is closed, the next one is tried.

Back ends build their session from `VerifiedBundle.read_variant()` bytes, never from a path: what runs is exactly
what was verified.
"""

from __future__ import annotations

import abc
import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_agent import preprocess
from edge_agent.bundle import BundleError, VerifiedBundle

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Detections:
    """Detections of one frame, already in source pixels and filtered by the score threshold."""

    boxes: np.ndarray  # [N, 4] float32 x1, y1, x2, y2 in source pixels
    scores: np.ndarray  # [N] float32
    labels: np.ndarray  # [N] int64, indices into the bundle's classes

    def __post_init__(self) -> None:
        if self.boxes.shape != (len(self.scores), 4) or self.labels.shape != self.scores.shape:
            raise ValueError(
                f"inconsistent detections: boxes {self.boxes.shape}, scores {self.scores.shape}, "
                f"labels {self.labels.shape}"
            )

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


@dataclass(frozen=True)
class DetectorOptions:
    """Back-end independent knobs (from `DetectorConfig`)."""

    # None: the variant's calibrated counting threshold when the bundle carries one, else its best-F2 threshold.
    score_threshold: float | None = None
    min_hits: int | None = None  # None: the variant's calibrated counting `min_hits`, else DEFAULT_MIN_HITS
    threads: int | None = None
    engine_cache_dir: Path | None = None
    # Device-local state (edge_agent.device_state): holds the key that authenticates cached TensorRT engines.
    state_dir: Path | None = None
    warmup_runs: int = 2
    extra: dict = field(default_factory=dict)


# Tracker matches before a track counts as a starfish, for a bundle that carries no calibrated counting settings.
DEFAULT_MIN_HITS = 3


class DetectorUnavailable(RuntimeError):
    """This back end cannot run here (library missing, no GPU...); the registry tries the next one."""


class Detector(abc.ABC):
    """Load one bundle variant, then turn BGR frames into `Detections` in source pixels."""

    name: str = ""

    def __init__(self, bundle: VerifiedBundle, variant: str | None, options: DetectorOptions) -> None:
        self.bundle = bundle
        self.variant = bundle.variant_name(variant or self.default_variant(bundle, options))
        self.model_path = bundle.display_path(self.variant)  # for messages and reports; never reopened
        self.model_size = bundle.manifest.variants[self.variant].size
        self.options = options
        spec = bundle.manifest.input
        self.input_width, self.input_height = spec.width, spec.height
        # Each variant's own settings: an INT8 model's scores are not the fp32 model's. The agent counts, so the
        # settings its count was calibrated at win over the single-frame best-F2 threshold.
        counting = bundle.manifest.counting_for(self.variant)
        if options.score_threshold is not None:
            self.score_threshold = options.score_threshold
        elif counting is not None:
            self.score_threshold = counting.score_threshold
        else:
            self.score_threshold = bundle.manifest.threshold_for(self.variant)
        if options.min_hits is not None:
            self.min_hits = options.min_hits
        else:
            self.min_hits = counting.min_hits if counting is not None else DEFAULT_MIN_HITS

    @classmethod
    def default_variant(cls, bundle: VerifiedBundle, options: DetectorOptions) -> str:
        """The variant to run when the configuration names none: the bundle's default unless a back end knows
        better for where it runs."""
        return bundle.manifest.default_variant

    @classmethod
    @abc.abstractmethod
    def available(cls) -> tuple[bool, str]:
        """Whether this back end can run on this machine, and if not, why."""

    @abc.abstractmethod
    def infer(self, tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run the model on a contract input tensor; return raw (boxes in input px, scores, labels)."""

    def detect(self, frame_bgr: np.ndarray, floor: float | None = None) -> Detections:
        """Pre-process (shared contract), infer, filter by score, map boxes back to source pixels.

        ``floor`` lowers the score filter for this call (the tracker's second association pass wants low-score
        boxes too); by default only detections at or above `score_threshold` are returned.
        """
        tensor, fit = preprocess.letterbox(frame_bgr, self.input_width, self.input_height)
        boxes, scores, labels = self.infer(tensor)
        threshold = self.score_threshold if floor is None else min(floor, self.score_threshold)
        return Detections(*preprocess.postprocess(boxes, scores, labels, fit, threshold))

    def warm_up(self) -> None:
        # The first runs allocate memory arenas, pick kernels (and for TensorRT may finish building), taking many
        # times a normal frame; run them now so that fps/latency stats and watchdogs never see them.
        blank = np.zeros((self.input_height, self.input_width, 3), np.uint8)
        for _ in range(self.options.warmup_runs):
            self.detect(blank)

    def describe(self) -> dict:
        """What the retained `model` topic says about the running detector."""
        manifest = self.bundle.manifest
        return {
            "name": manifest.name,
            "version": manifest.version,
            "variant": self.variant,
            "backend": self.name,
        }

    def close(self) -> None:  # noqa: B027 - optional hook, most back ends free on garbage collection
        """Release native resources. Must also work on a detector whose `__init__` failed half-way."""


# name -> "module:Class"; modules are imported on demand so one broken accelerator cannot break the others.
REGISTRY: dict[str, str] = {
    "onnxruntime": "edge_agent.detectors.onnxruntime:OnnxRuntimeDetector",
    "tensorrt": "edge_agent.detectors.tensorrt:TensorRTDetector",
}


def detector_class(name: str) -> type[Detector]:
    """The class registered under ``name``; `KeyError` naming the known ones otherwise."""
    if name not in REGISTRY:
        raise KeyError(f"unknown detector back end {name!r}; known: {', '.join(sorted(REGISTRY))}")
    module_name, class_name = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def available(name: str) -> tuple[bool, str]:
    """Whether back end ``name`` can run here, and if not, why."""
    return detector_class(name).available()


def _counting_source(detector: Detector) -> str:
    """For the start-up log line: where the detector's counting settings came from."""
    options = detector.options
    overridden = options.score_threshold is not None or options.min_hits is not None
    if detector.bundle.manifest.counting_for(detector.variant) is None:
        return ", configured" if overridden else ""
    return ", calibrated counting settings" + (" (configuration overrides)" if overridden else "")


def create_detector(
    names: Sequence[str], bundle: VerifiedBundle, variant: str | None, options: DetectorOptions
) -> Detector:
    """Instantiate and warm up the first back end in ``names`` that is available and loads this bundle.

    Any exception from one back end (not only `DetectorUnavailable`) is logged, the partial detector closed, and
    the next name tried; `DetectorUnavailable` lists every back end's reason when none works.
    """
    reasons = []
    for name in names:
        cls = detector_class(name)
        ok, reason = cls.available()
        if not ok:
            logger.info("detector back end %s unavailable: %s", name, reason)
            reasons.append(f"{name}: {reason}")
            continue
        # Allocated before __init__ runs, so a constructor that fails half-way (a CUDA stream created, then an
        # engine that does not load) can still be closed.
        detector = cls.__new__(cls)
        try:
            detector.__init__(bundle, variant, options)  # type: ignore[misc]
            detector.warm_up()
        except BundleError:
            _close_quietly(name, detector)
            raise  # the bundle itself is wrong (no such variant, a file changed): no back end can fix that
        except Exception as exc:  # noqa: BLE001 - native back ends raise anything; the next one may still work
            reason = _one_line(exc)
            if isinstance(exc, DetectorUnavailable):
                logger.warning("detector back end %s cannot load this bundle: %s", name, reason)
            else:
                logger.warning("detector back end %s failed to start (%s); trying the next one", name, reason)
                # The native traceback helps a developer, not the operator reading the journal: debug level.
                logger.debug("detector back end %s start-up failure", name, exc_info=True)
            reasons.append(f"{name}: {reason}")
            _close_quietly(name, detector)
            continue
        logger.info(
            "detector: %s (%s v%d, variant %s, threshold %.3f, min_hits %d%s)",
            name,
            bundle.manifest.name,
            bundle.manifest.version,
            detector.variant,
            detector.score_threshold,
            detector.min_hits,
            _counting_source(detector),
        )
        return detector
    raise DetectorUnavailable("no detector back end could run: " + "; ".join(reasons))


def _close_quietly(name: str, detector: Detector) -> None:
    try:
        detector.close()
    except Exception:  # noqa: BLE001 - a failing close must not hide why the back end failed
        logger.warning("closing the failed %s detector raised too", name, exc_info=True)


def _one_line(exc: BaseException) -> str:
    """An exception as one short line (native libraries put whole reports in their messages)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, DetectorUnavailable):
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= 300 else text[:297] + "..."

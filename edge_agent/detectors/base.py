"""The one small interface every detector back end implements, plus the registry that picks one by name.

A back end is one file, one class, registered under its name (`@register("onnxruntime")`). Optional
accelerators are guarded at import: a back end whose library is missing reports `available() -> (False, reason)`
and `create_detector` falls through to the next name in the configured order, logging why.
"""

from __future__ import annotations

import abc
import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_agent import preprocess
from edge_agent.bundle import VerifiedBundle

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

    score_threshold: float | None = None  # None: the bundle's best-F2 threshold
    threads: int | None = None
    engine_cache_dir: Path | None = None
    warmup_runs: int = 2
    extra: dict = field(default_factory=dict)


class DetectorUnavailable(RuntimeError):
    """This back end cannot run here (library missing, no GPU...); the registry tries the next one."""


class Detector(abc.ABC):
    """Load one bundle variant, then turn BGR frames into `Detections` in source pixels."""

    name: str = ""

    def __init__(self, bundle: VerifiedBundle, variant: str | None, options: DetectorOptions) -> None:
        self.bundle = bundle
        self.variant = variant or self.default_variant(bundle, options)
        self.model_path = bundle.variant_path(self.variant)
        self.options = options
        spec = bundle.manifest.input
        self.input_width, self.input_height = spec.width, spec.height
        self.score_threshold = (
            options.score_threshold if options.score_threshold is not None else bundle.manifest.score_threshold
        )

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

    def detect(self, frame_bgr: np.ndarray) -> Detections:
        """Pre-process (shared contract), infer, filter by score, map boxes back to source pixels."""
        tensor, fit = preprocess.letterbox(frame_bgr, self.input_width, self.input_height)
        boxes, scores, labels = self.infer(tensor)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        keep = scores >= self.score_threshold
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)[keep]
        return Detections(
            preprocess.boxes_to_source(boxes, fit),
            scores[keep],
            np.asarray(labels, dtype=np.int64).reshape(-1)[keep],
        )

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
        """Release native resources."""


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


def create_detector(
    names: list[str] | tuple[str, ...], bundle: VerifiedBundle, variant: str | None, options: DetectorOptions
) -> Detector:
    """Instantiate and warm up the first back end in ``names`` that is available and loads this bundle."""
    reasons = []
    for name in names:
        cls = detector_class(name)
        ok, reason = cls.available()
        if not ok:
            logger.info("detector back end %s unavailable: %s", name, reason)
            reasons.append(f"{name}: {reason}")
            continue
        try:
            detector = cls(bundle, variant, options)
            detector.warm_up()
        except DetectorUnavailable as exc:
            logger.warning("detector back end %s cannot load this bundle: %s", name, exc)
            reasons.append(f"{name}: {exc}")
            continue
        logger.info("detector: %s (%s v%d, variant %s, threshold %.3f)", name, bundle.manifest.name,
                    bundle.manifest.version, detector.variant, detector.score_threshold)
        return detector
    raise DetectorUnavailable("no detector back end could run: " + "; ".join(reasons))

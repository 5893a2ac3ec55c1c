"""Detector back ends behind one interface (`base.Detector`), chosen by name with an ordered fallback."""

from edge_agent.detectors.base import (
    REGISTRY,
    Detections,
    Detector,
    DetectorOptions,
    DetectorUnavailable,
    available,
    create_detector,
    detector_class,
)

__all__ = [
    "REGISTRY",
    "Detections",
    "Detector",
    "DetectorOptions",
    "DetectorUnavailable",
    "available",
    "create_detector",
    "detector_class",
]

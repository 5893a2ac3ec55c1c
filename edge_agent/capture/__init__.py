"""Video capture: one thread per camera, newest-frame hand-off, reconnect with capped exponential backoff."""

from edge_agent.capture.camera import Camera, CameraState, CameraStats, Frame
from edge_agent.capture.sources import SourceKind, classify_source, open_source

__all__ = ["Camera", "CameraState", "CameraStats", "Frame", "SourceKind", "classify_source", "open_source"]

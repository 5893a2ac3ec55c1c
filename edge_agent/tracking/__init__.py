"""Multi-object tracking: detections -> persistent starfish ids, unique counts and track lifecycle events."""

from edge_agent.tracking.tracker import Track, Tracker, TrackerUpdate, iou_matrix

__all__ = ["Track", "Tracker", "TrackerUpdate", "iou_matrix"]

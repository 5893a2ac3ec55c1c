"""A small IoU tracker with constant-velocity prediction and ByteTrack's two association passes.

Why not a library: norfair pins numpy<2 (it would downgrade the whole runtime and break OpenCV 5); ByteTrack now
lives in roboflow's `trackers` package, which requires the non-headless `opencv-python` (a second cv2 beside the
runtime's headless one) and supervision with matplotlib/pillow/scipy, for one class. Starfish are few, slow and
sparse, so greedy IoU matching on predicted boxes is enough and stays dependency-free. `starfish agent measure
tracking --tracker ours --tracker bytetrack` compares the two on synthetic videos. Tested in tests/test_tracking.py.

Rules:
* detections at or above the detector's score threshold are *high*, the others (down to the agent's low floor)
  *low*. First pass: a high detection matches the live track whose predicted box overlaps it most (IoU >=
  ``iou_threshold``; confirmed tracks first); then a nearby centre (within one predicted-box diagonal) for small
  fast boxes that no longer overlap. Second pass (ByteTrack): low detections keep *confirmed* tracks alive that the
  first pass left unmatched (IoU >= ``low_iou_threshold``): a starfish the detector is unsure about for a few
  frames stays one starfish. A low detection never starts a track;
* a track becomes *confirmed* (a distinct starfish: ``unique_count`` += 1, `new` event) after ``min_hits`` matches;
  tentative tracks die at their second consecutive miss, so one-off false positives are never counted;
* a confirmed track ends (`end` event) once it has been unseen for more than ``max_age_s`` seconds of *capture
  time* (the ``clock`` passed to `update`), however many frames were processed meanwhile: a camera read at 2 fps
  and one at 30 fps keep a starfish equally long. The agent flushes a camera's tracks when it goes offline or a
  file loops (a new segment is a new scene);
* the per-frame ``count`` is the number of confirmed tracks seen in that frame.
Frame gaps (frames dropped by latest-frame capture) are handled by predicting with the frame-index difference.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

logger = logging.getLogger(__name__)

VELOCITY_GAIN = 0.5  # weight of the newest displacement in the smoothed velocity
CENTRE_MATCH = 1.0  # centre-distance fallback: at most one predicted-box diagonal away (tuned on
# `starfish data synth --seed 3` at miss 0.3, jitter 5 px: 0.5 fragmented small fast starfish into 2-5 tracks)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` [N,4] with every box in ``b`` [M,4] (xyxy) -> [N, M]."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float32)
    a = a[:, None, :]
    b = b[None, :, :]
    inter_w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    inter_h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = inter_w * inter_h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0).astype(np.float32)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Track:
    """One starfish (or a tentative candidate) followed across frames."""

    track_id: int
    box: np.ndarray
    first_frame: int
    first_ts: float
    last_frame: int
    last_ts: float
    max_score: float
    last_clock: float = 0.0  # capture time of the last match, what the track ages by
    hits: int = 1
    missed: int = 0
    confirmed: bool = False
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4, np.float32))

    def predict(self, frame_index: int) -> np.ndarray:
        return self.box + self.velocity * float(frame_index - self.last_frame)

    def event(self, kind: str) -> dict:
        """The `tracks` topic payload body for a `new` or `end` event."""
        return {
            "event": kind,
            "track_id": self.track_id,
            "first_seen": _iso(self.first_ts),
            "last_seen": _iso(self.last_ts),
            "frames": self.hits,
            "max_score": round(float(self.max_score), 4),
        }


@dataclass(frozen=True)
class TrackerUpdate:
    """Result of one frame: a track id per detection (-1: tentative or unmatched) plus lifecycle events."""

    track_ids: np.ndarray  # [N] int64, aligned with the detections passed in
    new: list[dict]
    ended: list[dict]
    unique_count: int
    count: int = 0  # confirmed tracks seen in this frame


class Tracker:
    """Per-camera tracker; not thread-safe (one inference loop owns it)."""

    def __init__(
        self,
        iou_threshold: float = 0.2,
        max_age_s: float = 1.5,
        min_hits: int = 3,
        low_iou_threshold: float = 0.5,
    ) -> None:
        if not 0 < iou_threshold < 1 or not 0 < low_iou_threshold < 1:
            raise ValueError(
                f"iou_threshold and low_iou_threshold must be in (0, 1), got {iou_threshold}, {low_iou_threshold}"
            )
        if max_age_s < 0 or min_hits < 1:
            raise ValueError(f"need max_age_s >= 0 and min_hits >= 1, got {max_age_s}, {min_hits}")
        self.iou_threshold = iou_threshold
        self.low_iou_threshold = low_iou_threshold
        self.max_age_s = max_age_s
        self.min_hits = min_hits
        self._tracks: list[Track] = []
        self._next_id = 1
        self.unique_count = 0

    @property
    def tracks(self) -> list[Track]:
        """Live tracks (confirmed and tentative)."""
        return list(self._tracks)

    def reset(self) -> list[dict]:
        """Forget every track and restart the unique count at 0 (a `reset` command); returns `end` events."""
        ended = self.flush()
        self.unique_count = 0
        return ended

    def flush(self) -> list[dict]:
        """End every live track now (shutdown, camera offline, file looped); returns their `end` events.

        The unique count is kept: the starfish were seen; only their tracks cannot continue across the break.
        """
        ended = [t.event("end") for t in self._tracks if t.confirmed]
        self._tracks = []
        return ended

    def update(
        self,
        boxes: np.ndarray,
        scores: np.ndarray,
        frame_index: int,
        timestamp: float,
        *,
        clock: float | None = None,
        score_threshold: float | None = None,
    ) -> TrackerUpdate:
        """Associate one frame's detections.

        ``timestamp``: wall-clock capture time (epoch s, for the events); ``clock``: capture time on the source's
        own clock that tracks age by (default ``timestamp``); ``score_threshold``: detections below it are low-score
        (second pass only; None: all are high).
        """
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        now = timestamp if clock is None else clock
        high = np.ones(len(boxes), bool) if score_threshold is None else scores >= score_threshold
        assignment = self._match(boxes, high, frame_index)
        track_ids = np.full(len(boxes), -1, dtype=np.int64)
        new_events: list[dict] = []
        matched_tracks = set()
        for det_index, track in assignment.items():
            matched_tracks.add(track.track_id)
            gap = max(1, frame_index - track.last_frame)
            # Smoothed per-frame velocity of the box centre (the same for both corners, so jitter in the box's size
            # does not become motion): damps detector jitter while following the camera's drift.
            shift = (boxes[det_index] - track.box) / gap
            centre_shift = np.tile((shift[:2] + shift[2:]) / 2, 2)
            track.velocity = (1 - VELOCITY_GAIN) * track.velocity + VELOCITY_GAIN * centre_shift
            track.box = boxes[det_index].copy()
            track.last_frame, track.last_ts, track.last_clock = frame_index, timestamp, now
            track.hits += 1
            track.missed = 0
            track.max_score = max(track.max_score, float(scores[det_index]))
            if not track.confirmed and track.hits >= self.min_hits:
                track.confirmed = True
                self.unique_count += 1
                new_events.append(track.event("new"))
            if track.confirmed:
                track_ids[det_index] = track.track_id
        ended: list[dict] = []
        survivors = []
        for track in self._tracks:
            if track.track_id not in matched_tracks:
                track.missed += 1
                expired = now - track.last_clock > self.max_age_s if track.confirmed else track.missed > 1
                if expired:
                    if track.confirmed:
                        ended.append(track.event("end"))
                    continue
            survivors.append(track)
        for det_index in range(len(boxes)):
            if det_index in assignment or not high[det_index]:
                continue
            track = Track(
                self._next_id,
                boxes[det_index].copy(),
                frame_index,
                timestamp,
                frame_index,
                timestamp,
                float(scores[det_index]),
                last_clock=now,
            )
            self._next_id += 1
            if self.min_hits <= 1:
                track.confirmed = True
                self.unique_count += 1
                new_events.append(track.event("new"))
                track_ids[det_index] = track.track_id
            survivors.append(track)
        self._tracks = survivors
        count = int((track_ids >= 0).sum())
        return TrackerUpdate(track_ids, new_events, ended, self.unique_count, count)

    def _match(self, boxes: np.ndarray, high: np.ndarray, frame_index: int) -> dict[int, Track]:
        if not self._tracks or len(boxes) == 0:
            return {}
        predicted = np.stack([t.predict(frame_index) for t in self._tracks])
        ious = iou_matrix(predicted, boxes)
        assignment: dict[int, Track] = {}
        used_tracks: set[int] = set()
        # First pass, high-score detections only: confirmed tracks get first pick, then greedy by IoU.
        high_ious = np.where(high[None, :], ious, 0.0)
        priority = np.array([1.0 if t.confirmed else 0.0 for t in self._tracks], dtype=np.float32)[:, None]
        order = np.argsort(-(high_ious + priority * (high_ious >= self.iou_threshold)), axis=None)
        for flat in order:
            ti, di = divmod(int(flat), len(boxes))
            if high_ious[ti, di] < self.iou_threshold:
                break
            if ti in used_tracks or di in assignment:
                continue
            used_tracks.add(ti)
            assignment[di] = self._tracks[ti]
        # Small boxes moving faster than their size no longer overlap their prediction: match by centre distance.
        free_tracks = [ti for ti in range(len(self._tracks)) if ti not in used_tracks]
        free_dets = [di for di in range(len(boxes)) if di not in assignment and high[di]]
        if free_tracks and free_dets:
            centres_p = (predicted[free_tracks, :2] + predicted[free_tracks, 2:]) / 2
            centres_d = (boxes[free_dets, :2] + boxes[free_dets, 2:]) / 2
            diag = np.hypot(
                predicted[free_tracks, 2] - predicted[free_tracks, 0],
                predicted[free_tracks, 3] - predicted[free_tracks, 1],
            )
            dist = np.linalg.norm(centres_p[:, None, :] - centres_d[None, :, :], axis=2) / np.maximum(diag, 1)[:, None]
            for flat in np.argsort(dist, axis=None):
                fi, fd = divmod(int(flat), len(free_dets))
                if dist[fi, fd] > CENTRE_MATCH:
                    break
                ti, di = free_tracks[fi], free_dets[fd]
                if ti in used_tracks or di in assignment:
                    continue
                used_tracks.add(ti)
                assignment[di] = self._tracks[ti]
        # Second pass (ByteTrack): low-score detections keep unmatched confirmed tracks alive, stricter IoU.
        if not high.all():
            low_ious = np.where(~high[None, :], ious, 0.0)
            for flat in np.argsort(-low_ious, axis=None):
                ti, di = divmod(int(flat), len(boxes))
                if low_ious[ti, di] < self.low_iou_threshold:
                    break
                if ti in used_tracks or di in assignment or not self._tracks[ti].confirmed:
                    continue
                used_tracks.add(ti)
                assignment[di] = self._tracks[ti]
        return assignment

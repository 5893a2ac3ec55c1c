"""Evidence for people: rate-limited JPEG snapshots and annotated video, written on a background thread.

Disk is the constraint on a Jetson's SD card, and the outbox (counts) needs it more than pictures do, so:

* a **quota** (`evidence.max_total_mb`, snapshots and video together): after each write the oldest files go first,
  including files left by earlier runs (the directories are scanned at start);
* a **free-space guard** (`evidence.min_free_mb`, `os.statvfs` of each evidence directory's filesystem): below it,
  evidence is paused - nothing more is written - until free space is back above the threshold plus a margin. Counting
  and the outbox never wait for it;
* annotated video is cut into segments (`video_output.segment_s`), so retention can drop old footage;
* the writer thread survives any error in one item (logged, counted in `errors`), and `stop()` never blocks, even
  if the thread has died.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_agent.capture import Frame
from edge_agent.config import EvidenceLimits, SnapshotConfig, VideoOutputConfig
from edge_agent.detectors import Detections

logger = logging.getLogger(__name__)

_MB = 1024 * 1024
_RESUME_MARGIN = 1.1  # resume once free space is 10 % above the threshold, so the guard does not flap
_EVIDENCE_SUFFIXES = (".jpg", ".mp4")


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged process may still write on ``path``'s filesystem (statvfs f_bavail)."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


@dataclass
class _Segment:
    writer: cv2.VideoWriter
    path: Path
    started: float  # capture timestamp of its first frame


class EvidenceWriter:
    """Bounded queue (drop when busy) -> one thread that draws and writes, within a quota and a free-space floor."""

    def __init__(self, snapshots: SnapshotConfig, video: VideoOutputConfig, limits: EvidenceLimits) -> None:
        self.snapshots = snapshots
        self.video = video
        self.limits = limits
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self._thread: threading.Thread | None = None
        self._segments: dict[str, _Segment] = {}
        self._files: deque[tuple[float, Path, int]] = deque()  # (mtime, path, bytes), oldest first
        self._bytes = 0
        self._last_space_check = 0.0
        self.paused = False
        self.dropped = 0  # offered while the queue was full
        self.skipped_low_space = 0
        self.snapshots_written = 0
        self.deleted = 0
        self.errors = 0

    @property
    def enabled(self) -> bool:
        return self.snapshots.enabled or self.video.enabled

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> dict[str, Any]:
        """For the `stats` topic."""
        return {
            "paused_low_space": self.paused,
            "bytes": self._bytes,
            "snapshots": self.snapshots_written,
            "deleted": self.deleted,
            "dropped_busy": self.dropped,
            "skipped_low_space": self.skipped_low_space,
            "errors": self.errors,
        }

    def _directories(self) -> list[Path]:
        dirs = []
        if self.snapshots.enabled:
            dirs.append(self.snapshots.directory)
        if self.video.enabled:
            dirs.append(self.video.directory)
        return dirs

    def start(self) -> None:
        if not self.enabled:
            return
        for directory in self._directories():
            directory.mkdir(parents=True, exist_ok=True)
        self._scan()
        self._prune()
        self._check_space(force=True)
        self._thread = threading.Thread(target=self._run, name="evidence", daemon=True)
        self._thread.start()

    def offer(self, runtime: Any, frame: Frame, detections: Detections, track_ids: np.ndarray) -> None:
        """Queue ``frame`` for a snapshot and/or the video. ``runtime`` is the camera's state in the agent: its
        mutable ``last_snapshot`` (monotonic s) rate-limits snapshots per camera."""
        if not self.enabled:
            return
        if self.paused and not self._check_space():  # statvfs at most every check_interval_s; only resumes here
            self.skipped_low_space += 1
            return
        snapshot = False
        if self.snapshots.enabled and len(detections) >= self.snapshots.min_count:
            now = time.monotonic()
            if now - runtime.last_snapshot >= self.snapshots.min_interval_s or runtime.last_snapshot == 0.0:
                runtime.last_snapshot = now
                snapshot = True
        if not (snapshot or self.video.enabled):
            return
        try:
            self._queue.put_nowait((frame, detections, track_ids, snapshot))
        except queue.Full:
            self.dropped += 1

    def stop(self, timeout: float = 5.0) -> None:
        """Finish what is queued (up to ``timeout``) and close the video files; never blocks on a dead thread."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout
        while self._thread.is_alive():
            try:
                self._queue.put(None, timeout=0.1)
                break
            except queue.Full:
                if time.monotonic() > deadline:
                    break
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            logger.warning("evidence writer still busy after %.1f s; leaving it", timeout)
            return
        self._close_segments()
        self._prune()  # a closed mp4 gains its index: account for its final size

    # -- writer thread --------------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                frame, detections, track_ids, snapshot = item
                try:
                    self._write(frame, detections, track_ids, snapshot)
                except Exception:  # noqa: BLE001 - one bad frame (NaN box, full disk, codec error) must not end evidence
                    self.errors += 1
                    if self.errors == 1 or self.errors % 100 == 0:
                        logger.exception("camera %s: writing evidence failed (%d so far)", frame.camera_id, self.errors)
        except BaseException:
            logger.exception("evidence writer stopped unexpectedly")  # stop() still returns: it never waits on us
            raise

    def _write(self, frame: Frame, detections: Detections, track_ids: np.ndarray, snapshot: bool) -> None:
        if not self._check_space():
            self.skipped_low_space += 1
            return
        annotated = draw_detections(frame.image, detections, track_ids)
        if snapshot:
            self._snapshot(frame, annotated)
        if self.video.enabled:
            self._video(frame, annotated)
        self._prune()

    def _check_space(self, force: bool = False) -> bool:
        """True when evidence may be written; pauses/resumes on the free space of the evidence filesystems."""
        now = time.monotonic()
        if not force and now - self._last_space_check < self.limits.check_interval_s:
            return not self.paused
        self._last_space_check = now
        try:
            free = min(free_bytes(d) for d in self._directories())
        except OSError as exc:
            logger.warning("evidence: cannot read free space (%s); pausing evidence", exc)
            free = 0
        floor = self.limits.min_free_mb * _MB
        if not self.paused and free < floor:
            self.paused = True
            self._close_segments()
            logger.warning("evidence paused: %.0f MB free < %.0f MB kept for the outbox", free / _MB, floor / _MB)
        elif self.paused and free >= floor * _RESUME_MARGIN:
            self.paused = False
            logger.info("evidence resumed: %.0f MB free", free / _MB)
        return not self.paused

    def _snapshot(self, frame: Frame, annotated: np.ndarray) -> None:
        stamp = datetime.fromtimestamp(frame.timestamp, tz=timezone.utc).strftime("%Y%m%dT%H%M%S_%fZ")
        base = self.snapshots.directory / f"{frame.camera_id}_{stamp}_f{frame.index}"
        params = [cv2.IMWRITE_JPEG_QUALITY, self.snapshots.jpeg_quality]
        written = [Path(f"{base}_boxes.jpg")]
        if self.snapshots.raw_copy:
            written.append(Path(f"{base}.jpg"))
        for path, image in zip(written, (annotated, frame.image), strict=False):
            if not cv2.imwrite(str(path), image, params):
                raise OSError(f"cannot write {path} (disk full or unwritable)")
            self._add(path)
        self.snapshots_written += 1

    def _video(self, frame: Frame, annotated: np.ndarray) -> None:
        segment = self._segments.get(frame.camera_id)
        if segment is not None and frame.timestamp - segment.started >= self.video.segment_s:
            self._close_segment(frame.camera_id)
            segment = None
        if segment is None:
            height, width = annotated.shape[:2]
            stamp = datetime.fromtimestamp(frame.timestamp, tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            path = self.video.directory / f"{frame.camera_id}_{stamp}.mp4"
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), self.video.fps, (width, height))
            if not writer.isOpened():
                raise OSError(f"cannot open video writer {path}")
            segment = self._segments[frame.camera_id] = _Segment(writer, path, frame.timestamp)
        segment.writer.write(annotated)

    def _close_segment(self, camera_id: str) -> None:
        segment = self._segments.pop(camera_id)
        segment.writer.release()
        if segment.path.exists():
            self._add(segment.path)

    def _close_segments(self) -> None:
        for camera_id in list(self._segments):
            self._close_segment(camera_id)

    # -- quota ----------------------------------------------------------------------------------------------------
    def _scan(self) -> None:
        """Account for the evidence earlier runs left, so the quota covers the directory, not just this run."""
        found = []
        for directory in self._directories():
            for path in directory.iterdir():
                if path.suffix in _EVIDENCE_SUFFIXES and path.is_file():
                    stat = path.stat()
                    found.append((stat.st_mtime, path, stat.st_size))
        found.sort()
        self._files = deque(found)
        self._bytes = sum(size for _, _, size in found)

    def _add(self, path: Path) -> None:
        size = path.stat().st_size
        self._files.append((time.time(), path, size))
        self._bytes += size

    def _open_bytes(self) -> int:
        total = 0
        for segment in self._segments.values():
            try:
                total += segment.path.stat().st_size
            except OSError:
                pass
        return total

    def _prune(self) -> None:
        """Delete the oldest evidence until snapshots + video fit in the quota (open segments count, stay)."""
        quota = self.limits.max_total_mb * _MB
        while self._files and self._bytes + self._open_bytes() > quota:
            _, path, size = self._files.popleft()
            self._bytes -= size
            try:
                path.unlink()
                self.deleted += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.warning("evidence: cannot delete %s: %s", path, exc)


def draw_detections(image: np.ndarray, detections: Detections, track_ids: np.ndarray) -> np.ndarray:
    """A copy of ``image`` with boxes, scores and track ids drawn."""
    out = image.copy()
    for box, score, track_id in zip(detections.boxes, detections.scores, track_ids, strict=True):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), (0, 0, 255), 2)
        label = f"#{track_id} {score:.2f}" if track_id >= 0 else f"{score:.2f}"
        cv2.putText(out, label, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 255), 1, cv2.LINE_AA)
    return out

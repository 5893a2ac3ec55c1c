"""Probation: does the new model behave on this device's real frames? Judged frame by frame, decided once.

`Probation` is fed by the agent's inference loop (`frame(ok=...)`, a few attribute updates per frame, no I/O) and
returns a verdict once: `ROLLBACK` as soon as the detection errors pass `probation_max_errors`, else, once the new
model has processed `probation_frames` frames and `probation_s` seconds have passed, `ROLLBACK` when its fps fell
by more than `probation_max_fps_drop` against ``baseline_fps`` (the previous model's fps just before the swap), or
`COMMIT`. Acting on the verdict (loading the previous model, deleting files) is the update worker's job.

`FrameRate` keeps the recent frame times the baseline is taken from.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Any

from edge_agent.update.config import UpdateConfig


class Verdict(str, Enum):
    CONTINUE = "continue"
    COMMIT = "commit"
    ROLLBACK = "rollback"


@dataclass
class Decision:
    verdict: Verdict
    reason: str = ""


class FrameRate:
    """Processed-frame times (monotonic) of the last ``window_s`` seconds; `fps()` over them. Thread-safe.

    No figure (None) from fewer than ``min_frames`` frames or less than ``min_span_s`` seconds: right after a start
    the first frames come in a burst (a file's buffered frames), which says nothing about the model's pace."""

    def __init__(self, window_s: float = 10.0, min_frames: int = 5, min_span_s: float = 1.0, cap: int = 2000) -> None:
        self.window_s = window_s
        self.min_frames = min_frames
        self.min_span_s = min_span_s
        self._times: deque[float] = deque(maxlen=cap)
        self._lock = threading.Lock()

    def tick(self, now: float) -> None:
        with self._lock:
            self._times.append(now)

    def fps(self) -> float | None:
        with self._lock:
            if not self._times:
                return None
            last = self._times[-1]
            recent = [t for t in self._times if t >= last - self.window_s]
        span = recent[-1] - recent[0]
        if len(recent) < self.min_frames or span < self.min_span_s:
            return None
        return (len(recent) - 1) / span


class Probation:
    """One update's probation; `frame()` is called from the inference thread only."""

    def __init__(self, cfg: UpdateConfig, *, update_id: int, baseline_fps: float | None, now: float | None = None):
        self.cfg = cfg
        self.update_id = update_id
        self.baseline_fps = baseline_fps
        self.started = time.monotonic() if now is None else now
        self.frames = 0
        self.errors = 0
        self._first_ok: float | None = None
        self._last_ok: float | None = None
        self.decided: Decision | None = None

    def fps(self) -> float | None:
        if self.frames < 2 or self._first_ok is None or self._last_ok is None or self._last_ok <= self._first_ok:
            return None
        return (self.frames - 1) / (self._last_ok - self._first_ok)

    def frame(self, ok: bool, now: float | None = None) -> Decision | None:
        """Count one processed frame (``ok``: detection succeeded); returns a decision once, then None."""
        if self.decided is not None:
            return None
        now = time.monotonic() if now is None else now
        if ok:
            self.frames += 1
            if self._first_ok is None:
                self._first_ok = now
            self._last_ok = now
        else:
            self.errors += 1
            if self.errors > self.cfg.probation_max_errors:
                return self._decide(
                    Verdict.ROLLBACK,
                    f"{self.errors} detection errors during probation (more than {self.cfg.probation_max_errors})",
                )
        if self.frames < self.cfg.probation_frames or now - self.started < self.cfg.probation_s:
            return None
        fps = self.fps()
        if self.baseline_fps is not None and fps is not None:
            floor = self.baseline_fps * (1.0 - self.cfg.probation_max_fps_drop)
            if fps < floor:
                return self._decide(
                    Verdict.ROLLBACK,
                    f"fps fell from {self.baseline_fps:.2f} to {fps:.2f} during probation "
                    f"(more than {self.cfg.probation_max_fps_drop:.0%} down)",
                )
        return self._decide(Verdict.COMMIT)

    def _decide(self, verdict: Verdict, reason: str = "") -> Decision:
        self.decided = Decision(verdict, reason)
        return self.decided

    def summary(self) -> dict[str, Any]:
        fps = self.fps()
        return {
            "frames": self.frames,
            "errors": self.errors,
            "seconds": round(time.monotonic() - self.started, 3),
            "fps": None if fps is None else round(fps, 2),
            "baseline_fps": None if self.baseline_fps is None else round(self.baseline_fps, 2),
        }

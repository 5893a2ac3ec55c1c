"""One capture thread per camera with latest-frame hand-off, rate limiting and reconnect with backoff.

Why a thread per camera: `cv2.VideoCapture.read()` blocks (decoding, network), and a live source that is not read
buffers frames inside FFmpeg/V4L2, so latency would grow whenever inference is slower than the camera. The thread
reads continuously and keeps only the newest frame in a one-slot hand-off; a frame replaced before inference took
it is counted as dropped. In ``every_frame`` mode the thread instead waits for the consumer (recorded clips).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from edge_agent.capture.sources import SourceError, SourceKind, classify_source, describe_source, open_source
from edge_agent.config import CameraConfig

logger = logging.getLogger(__name__)


class CameraState(str, enum.Enum):
    STARTING = "starting"
    ONLINE = "online"
    OFFLINE = "offline"  # lost or not openable; reconnecting with backoff
    DISABLED = "disabled"  # switched off in the configuration
    FINISHED = "finished"  # a non-looping video file reached its end


@dataclass(frozen=True)
class Frame:
    """A captured frame: BGR uint8 pixels plus where and when it came from."""

    camera_id: str
    index: int  # frames read from this camera since the agent started (keeps growing across reconnects/loops)
    timestamp: float  # wall-clock capture time, seconds since the epoch
    image: np.ndarray
    # Seconds on the source's own clock, what tracks age by: monotonic capture time for live sources, the position
    # in the video for files (a clip decoded faster than real time still ages its tracks at the clip's pace).
    media_s: float = 0.0
    # Bumped on every (re)open and every loop of a file: frames of two segments are not one continuous scene.
    segment: int = 0


@dataclass(frozen=True)
class CameraStats:
    """Cumulative counters; rates come from differencing two snapshots."""

    frames_read: int
    frames_delivered: int
    frames_dropped: int  # replaced by a newer frame before inference took them (latest-frame semantics)
    frames_skipped: int  # left out on purpose by `target_fps`
    reconnects: int
    state: CameraState


StatusCallback = Callable[[str, CameraState], None]

# A connection that delivered frames for this long (or for `reconnect_max_s`, if shorter) was healthy: the next
# failure starts the backoff again from `reconnect_initial_s`. A stream that opens and dies at once keeps doubling.
_STABLE_CONNECTION_S = 10.0
_FALLBACK_FILE_FPS = 10.0  # media clock of a video file whose header lacks a usable rate

# Time allowed beyond `open_timeout_s` for a blocked open to return before `stop()` gives up on the thread.
_STOP_MARGIN_S = 1.0


def media_clock_fps(reported_fps: float) -> float:
    """The rate a video file's frames are timed by: its header's, or a fallback when that is missing or absurd.
    Frame ``i`` of a file is at ``i / media_clock_fps(...)`` seconds (``Frame.media_s``)."""
    return reported_fps if 0 < reported_fps < 1000 else _FALLBACK_FILE_FPS


class Camera:
    """Owns one source and its capture thread. `get()` hands the consumer the newest frame."""

    def __init__(
        self, cfg: CameraConfig, on_status: StatusCallback | None = None, wakeup: threading.Event | None = None
    ) -> None:
        """``wakeup`` (shared by several cameras) is set whenever a frame arrives or the state changes."""
        self.cfg = cfg
        self._wakeup = wakeup
        self.id = cfg.id
        self.kind = classify_source(cfg.source)
        self._on_status = on_status
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._slot: Frame | None = None
        self._state = CameraState.STARTING
        self._thread: threading.Thread | None = None
        self._read = self._delivered = self._dropped = self._skipped = self._reconnects = 0
        self._last_error: str | None = None
        realtime = cfg.realtime if cfg.realtime is not None else cfg.read_mode == "latest"
        self._realtime = realtime and self.kind is SourceKind.FILE
        self._min_period = 1.0 / cfg.target_fps if cfg.target_fps else 0.0
        self._last_delivered_ts = 0.0
        self._segment = -1
        self._media_offset = 0.0  # file time of earlier loops, so media_s never goes back

    # -- consumer side -------------------------------------------------------------------------------------------
    def get(self, timeout: float | None = None) -> Frame | None:
        """The newest frame not yet taken, waiting up to ``timeout`` s; None when there is none (or finished)."""
        with self._cond:
            if self._slot is None and timeout:
                self._cond.wait_for(lambda: self._slot is not None or self._ended(), timeout)
            frame, self._slot = self._slot, None
            if frame is not None:
                self._delivered += 1
                self._cond.notify_all()  # an `every_frame` producer may be waiting for the slot
            return frame

    def poll(self) -> Frame | None:
        return self.get(timeout=None)

    @property
    def state(self) -> CameraState:
        return self._state

    @property
    def finished(self) -> bool:
        """True once the camera will never deliver another frame (file ended, disabled, or stopped)."""
        with self._cond:
            return self._ended() and self._slot is None

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def stats(self) -> CameraStats:
        with self._cond:
            return CameraStats(self._read, self._delivered, self._dropped, self._skipped, self._reconnects, self._state)

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def start(self) -> None:
        if not self.cfg.enabled:
            self._set_state(CameraState.DISABLED)
            return
        self._thread = threading.Thread(target=self._run, name=f"capture-{self.id}", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the thread to end without waiting (stop several cameras in parallel, then `stop()` each)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    @property
    def stop_timeout_s(self) -> float:
        """How long `stop()` waits by default: a blocked OpenCV open or read returns within its timeout."""
        return max(self.cfg.open_timeout_s, self.cfg.read_timeout_s) + _STOP_MARGIN_S

    @property
    def thread_alive(self) -> bool:
        """True while the capture thread runs (after `stop()`: it is still blocked inside OpenCV)."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the thread to end and wait for it, by default until a blocked open/read must have returned.

        Why wait that long: on Python 3.11 a daemon thread still inside native OpenCV/FFmpeg code when the
        interpreter finalizes is unwound by pthread_exit through C++ frames, which aborts the whole process
        ("terminate called without an active exception", exit 134). Callers that give up earlier must end the
        process with `os._exit` (see `edge_agent.cli`), never by interpreter shutdown.
        """
        self.request_stop()
        if self._thread is not None:
            timeout = self.stop_timeout_s if timeout is None else timeout
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("camera %s: capture thread still blocked after %.1f s; leaving it", self.id, timeout)

    # -- producer side -------------------------------------------------------------------------------------------
    def _ended(self) -> bool:
        return self._state in (CameraState.FINISHED, CameraState.DISABLED) or (
            self._stop.is_set() and (self._thread is None or not self._thread.is_alive())
        )

    def _set_state(self, state: CameraState) -> None:
        with self._cond:
            if state is self._state:
                return
            self._state = state
            self._cond.notify_all()
        if self._wakeup is not None:
            self._wakeup.set()
        logger.info("camera %s: %s", self.id, state.value)
        if self._on_status is not None:
            try:
                self._on_status(self.id, state)
            except Exception:  # noqa: BLE001 - a broken callback must not kill capture
                logger.exception("camera %s: status callback failed", self.id)

    def _run(self) -> None:
        delay = self.cfg.reconnect_initial_s
        ever_opened = False
        logger.info("camera %s: opening %s", self.id, describe_source(self.cfg.source))
        while not self._stop.is_set():
            try:
                capture = open_source(self.cfg.source, self.cfg.open_timeout_s, self.cfg.read_timeout_s)
            except SourceError as exc:
                self._fail(str(exc), delay)
                delay = min(delay * 2, self.cfg.reconnect_max_s)
                continue
            if ever_opened:
                self._reconnects += 1
            ever_opened = True
            opened_at = time.monotonic()
            try:
                outcome, read_here = self._read_loop(capture)
            finally:
                capture.release()
            if outcome == "finished":
                self._set_state(CameraState.FINISHED)
                return
            if outcome == "loop":
                continue
            if outcome == "lost":
                # Only this connection's history counts: a stream that opens, yields a frame and dies again must
                # back off, however many frames earlier connections delivered.
                stable = min(_STABLE_CONNECTION_S, self.cfg.reconnect_max_s)
                if read_here and time.monotonic() - opened_at >= stable:
                    delay = self.cfg.reconnect_initial_s
                self._fail("stream lost (no frame within the read timeout or end of stream)", delay)
                delay = min(delay * 2, self.cfg.reconnect_max_s)
        logger.debug("camera %s: capture thread ends", self.id)

    def _fail(self, reason: str, delay: float) -> None:
        if reason != self._last_error:
            logger.warning(
                "camera %s: %s; retrying in %.1f s (backoff up to %.0f s)",
                self.id,
                reason,
                delay,
                self.cfg.reconnect_max_s,
            )
        self._last_error = reason
        self._set_state(CameraState.OFFLINE)
        self._stop.wait(delay)

    def _read_loop(self, capture: cv2.VideoCapture) -> tuple[str, int]:
        """Read until the stop flag, a lost stream ("lost"), or the end of a file ("finished" / "loop").

        Returns the outcome and the number of frames this connection yielded.
        """
        fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
        file_fps = media_clock_fps(fps)
        period = 1.0 / fps if self._realtime and 0 < fps < 1000 else 0.0
        started = time.monotonic()
        read_here = 0
        self._segment += 1
        while not self._stop.is_set():
            if period:
                # Pace a file like a live camera so latest-frame semantics behave as they would in the field.
                lag = started + read_here * period - time.monotonic()
                if lag > 0:
                    self._stop.wait(lag)
            skip = self._skip_next()
            if skip:
                # `target_fps` leaves this frame out: grab() advances the stream without the BGR conversion and
                # copy that read() would spend on it.
                ok, image = capture.grab(), None
            else:
                ok, image = capture.read()
            if not ok or (image is None and not skip):
                if self.kind is SourceKind.FILE:
                    if read_here == 0:
                        # Opens but yields nothing: corrupt from the first frame. Looping would spin, so stop.
                        self._last_error = f"video file {self.cfg.source} has no decodable frames"
                        logger.error("camera %s: %s", self.id, self._last_error)
                        return "finished", read_here
                    if self.cfg.loop:
                        logger.debug("camera %s: end of file after %d frames, looping", self.id, read_here)
                        self._media_offset += read_here / file_fps
                        return "loop", read_here
                    logger.info("camera %s: end of video after %d frames", self.id, read_here)
                    return "finished", read_here
                return "lost", read_here
            if read_here == 0:
                self._last_error = None
                self._set_state(CameraState.ONLINE)
            if self.kind is SourceKind.FILE:
                media_s = self._media_offset + read_here / file_fps
            else:
                media_s = time.monotonic()
            read_here += 1
            if skip:
                with self._cond:
                    self._read += 1
                    self._skipped += 1
                continue
            assert image is not None
            self._deliver(image, media_s)
        return "stopped", read_here

    def _skip_next(self) -> bool:
        """Whether `target_fps` leaves out the frame about to be read."""
        return bool(self._min_period) and time.time() - self._last_delivered_ts < self._min_period

    def _deliver(self, image: np.ndarray, media_s: float) -> None:
        now = time.time()
        with self._cond:
            self._read += 1
            index = self._read - 1
            if self.cfg.read_mode == "every_frame":
                self._cond.wait_for(lambda: self._slot is None or self._stop.is_set())
                if self._stop.is_set():
                    return
            elif self._slot is not None:
                self._dropped += 1
            self._last_delivered_ts = now
            self._slot = Frame(self.id, index, now, image, media_s, self._segment)
            self._cond.notify_all()
        if self._wakeup is not None:
            self._wakeup.set()

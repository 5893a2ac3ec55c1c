"""The orchestrator: cameras -> detector -> tracker -> publisher, plus stats, evidence and a clean shutdown.

Threads: one capture thread per camera (newest frame wins), this inference loop (one detector shared by all
cameras, round-robin), the MQTT client's network thread and a small evidence thread (JPEG snapshots / annotated
video, so disk I/O never stalls inference). Capture, tracking and publishing therefore overlap inference instead of
adding to it.

The detector lives in a `DetectorSlot`: `Agent.swap_detector()` replaces it between two frames (the frame in flight
finishes on the old one), so a model update never stops capture or publishing. Over-the-air updates
(`edge_agent.update.runtime.AgentUpdates`, when configured) run on their own thread and only call back into the
agent for the swap; the inference loop feeds their probation one cheap call per frame.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edge_agent.capture import Camera, CameraState, Frame
from edge_agent.config import AgentConfig
from edge_agent.detectors import Detections, Detector
from edge_agent.evidence import EvidenceWriter, draw_detections  # noqa: F401 - draw_detections re-exported
from edge_agent.mqtt.payloads import CameraState as MqttCameraState
from edge_agent.outbox import OutboxError
from edge_agent.ratelimit import LogLimiter
from edge_agent.tracking import Tracker

if TYPE_CHECKING:
    from edge_agent.bundle import VerifiedBundle
    from edge_agent.update.runtime import AgentUpdates

logger = logging.getLogger(__name__)

# Longest wait at shutdown for capture threads blocked in an OpenCV open/read (systemd's stop timeout is 90 s).
CAPTURE_STOP_CAP_S = 10.0

_MQTT_CAMERA_STATE: dict[CameraState, MqttCameraState] = {
    CameraState.ONLINE: "online",
    CameraState.OFFLINE: "offline",
    CameraState.DISABLED: "disabled",
    CameraState.FINISHED: "disabled",  # a finished clip will not come back: not "offline, reconnecting"
}


class Publisher(Protocol):
    """What the agent needs from `edge_agent.mqtt.publisher.AgentPublisher`."""

    def start(self) -> None: ...
    def set_model_info(self, info: dict) -> None: ...
    def set_camera_status(self, camera_id: str, status: MqttCameraState) -> None: ...
    def publish_counts(self, camera_id: str, payload: dict, *, wait: bool = True) -> int | None: ...
    def publish_count_value(self, camera_id: str, count: int, unique_count: int | None = None) -> None: ...
    def publish_track_event(self, camera_id: str, payload: dict, *, wait: bool = True) -> None: ...
    def publish_stats(self, payload: dict[str, Any]) -> bool: ...
    def on_command(self, handler: Callable[[str, bytes], None]) -> None: ...
    def set_update_state(self, state: dict[str, Any]) -> None: ...
    def publish_update_event(self, event: dict[str, Any], *, wait: bool = False) -> None: ...
    def stop(self, timeout: float = 5.0) -> None: ...


class UpdateHooks(Protocol):
    """What the agent needs from `edge_agent.update.runtime.AgentUpdates`."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def submit(self, payload: bytes) -> bool: ...
    def on_frame(self, ok: bool, now: float) -> None: ...


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class DetectorSlot:
    """Holds the running detector; swaps it between frames without pausing anything else."""

    def __init__(self, detector: Detector, load_time_s: float | None = None) -> None:
        self._lock = threading.Lock()
        self._detector = detector
        self.load_time_s = load_time_s

    @property
    def detector(self) -> Detector:
        return self._detector

    def detect(self, image: np.ndarray, floor: float | None = None) -> tuple[Detections, Detector]:
        with self._lock:  # the swap waits for the frame in flight
            detector = self._detector
            return detector.detect(image, floor), detector

    def swap(self, new: Detector, load_time_s: float | None = None) -> Detector:
        with self._lock:
            old, self._detector = self._detector, new
            self.load_time_s = load_time_s
        return old


@dataclass
class CameraRuntime:
    """Per-camera state owned by the inference loop."""

    camera: Camera
    tracker: Tracker
    frames: int = 0
    last_count: int = 0
    counts: deque = field(default_factory=lambda: deque(maxlen=100_000))
    last_snapshot: float = 0.0
    segment: int | None = None  # the capture segment of the last frame (a new one means a reconnect or a loop)
    prev_stats: tuple[float, int, int, int] | None = None  # (monotonic, read, dropped, processed)


@dataclass(frozen=True)
class CameraSummary:
    camera_id: str
    frames: int
    unique_count: int
    count_histogram: dict[int, int]
    max_count: int
    state: str
    dropped: int


@dataclass(frozen=True)
class AgentSummary:
    elapsed_s: float
    frames: int
    fps: float  # throughput between the first and the last processed frame (start-up and shutdown excluded)
    inference_ms_p50: float | None
    cameras: list[CameraSummary]

    def to_dict(self) -> dict:
        return asdict(self)


class Agent:
    """Runs the pipeline until `stop()` (or until every finite source has ended)."""

    def __init__(self, cfg: AgentConfig, publisher: Publisher, detector: Detector, load_time_s: float | None = None):
        self.cfg = cfg
        self.publisher = publisher
        self.slot = DetectorSlot(detector, load_time_s)
        self._stop = threading.Event()
        self._wakeup = threading.Event()
        self._resets: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._flushes: queue.SimpleQueue[str] = queue.SimpleQueue()  # cameras gone offline: end their tracks
        self.cameras: dict[str, CameraRuntime] = {}
        for cam_cfg in cfg.cameras:
            camera = Camera(cam_cfg, on_status=self._on_camera_status, wakeup=self._wakeup)
            tracker = Tracker(
                cfg.tracker.iou_threshold, cfg.tracker.max_age_s, detector.min_hits, cfg.tracker.low_iou_threshold
            )
            self.cameras[cam_cfg.id] = CameraRuntime(camera, tracker)
        self._inference_ms: deque[float] = deque(maxlen=2000)
        self._window_ms: list[float] = []
        self._evidence = EvidenceWriter(cfg.snapshots, cfg.video_output, cfg.evidence)
        self._started = time.monotonic()
        self._processed = 0
        self._first_frame_at: float | None = None  # monotonic time the first frame finished (throughput clock)
        self._last_frame_at = 0.0
        self.detect_errors = 0
        self.publish_errors = 0
        self.commands_rejected = 0
        self._command_log = LogLimiter(10.0)
        self._last_stats = time.monotonic()
        self._stopped = threading.Event()
        # Closed last at shutdown, after the publisher has flushed (e.g. the outbox that build_agent opened).
        self.closers: list[Callable[[], None]] = []
        self.updates: UpdateHooks | None = None  # over-the-air model updates (build_agent sets them when configured)

    # -- public control --------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish the frame in flight and shut down (safe from signal handlers and other threads)."""
        self._stop.set()
        self._wakeup.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def blocked_capture_threads(self) -> list[str]:
        """Cameras whose capture thread is still inside OpenCV after shutdown (the CLI then exits with os._exit)."""
        return [camera_id for camera_id, r in self.cameras.items() if r.camera.thread_alive]

    def swap_detector(self, new: Detector, load_time_s: float | None = None, *, keep_old: bool = False) -> Detector:
        """Replace the running detector between two frames: load-new-then-unload-old.

        ``new`` is already loaded and warmed up (by the caller, on its own thread, while the old one kept counting);
        the swap itself only waits for the frame in flight, so the next frame runs on ``new``: no frame is skipped
        and the counts' seq goes on unbroken. The old detector is closed after that, unless ``keep_old`` (an update
        in probation keeps it warm for an instant rollback); it is returned either way.
        """
        old = self.slot.swap(new, load_time_s)
        self._publish_model_info()
        logger.info("detector swapped: %s -> %s", old.describe(), new.describe())
        if not keep_old:
            old.close()
        return old

    def recent_inference_ms(self) -> list[float]:
        """Inference times of the last frames (the reference a candidate model's latency is checked against)."""
        return list(self._inference_ms)[-200:]

    def reset(self, camera_id: str) -> None:
        """Restart the unique count of ``camera_id`` (applied by the inference loop before its next frame)."""
        if camera_id not in self.cameras:
            raise KeyError(f"unknown camera {camera_id!r}; cameras: {sorted(self.cameras)}")
        self._resets.put(camera_id)
        self._wakeup.set()

    # -- main loop -------------------------------------------------------------------------------------------------
    def run(self) -> int:
        """Start everything, process frames until stopped, shut down cleanly; returns the process exit code."""
        self.publisher.on_command(self._on_command)
        self.publisher.start()
        self._publish_model_info()
        if self.updates is not None:
            self.updates.start()
        self._evidence.start()
        for runtime in self.cameras.values():
            runtime.camera.start()
        self._started = self._last_stats = time.monotonic()
        try:
            self._loop()
        finally:
            self._shutdown()
        return 0

    def _loop(self) -> None:
        runtimes = list(self.cameras.values())
        turn = 0
        while not self._stop.is_set():
            self._wakeup.wait(0.25)
            self._wakeup.clear()
            self._apply_resets()
            self._apply_flushes()
            # Round-robin start so no camera starves when inference cannot keep up with all of them.
            for offset in range(len(runtimes)):
                if self._stop.is_set():
                    break
                runtime = runtimes[(turn + offset) % len(runtimes)]
                frame = runtime.camera.poll()
                if frame is not None:
                    self._process(runtime, frame)
            turn += 1
            now = time.monotonic()
            if now - self._last_stats >= self.cfg.mqtt.stats_interval_s:
                self._publish_stats(now)
            if self.cfg.stop_when_sources_end and all(r.camera.finished for r in runtimes):
                logger.info("every source has ended; stopping")
                break

    def _process(self, runtime: CameraRuntime, frame: Frame) -> None:
        if runtime.segment is not None and frame.segment != runtime.segment:
            # Reconnected or looped: the scene did not continue, so no track may bridge the break.
            self._flush_tracks(runtime, "new capture segment")
        runtime.segment = frame.segment
        started = time.perf_counter()
        try:
            detections, detector = self.slot.detect(frame.image, self.cfg.tracker.low_score_threshold)
        except Exception:  # noqa: BLE001 - one bad frame (or a native error) must not stop counting
            self.detect_errors += 1
            logger.exception("camera %s frame %d: detection failed", runtime.camera.id, frame.index)
            if self.updates is not None:
                self.updates.on_frame(False, time.monotonic())
            return
        elapsed_ms = (time.perf_counter() - started) * 1000
        self._inference_ms.append(elapsed_ms)
        self._window_ms.append(elapsed_ms)
        # A swapped-in bundle may carry other counting settings; they apply from its first frame.
        runtime.tracker.min_hits = detector.min_hits
        update = runtime.tracker.update(
            detections.boxes,
            detections.scores,
            frame.index,
            frame.timestamp,
            clock=frame.media_s,
            score_threshold=detector.score_threshold,
        )
        # Low-score boxes only served association: report those that kept a confirmed track alive, drop the rest.
        shown = (detections.scores >= detector.score_threshold) | (update.track_ids >= 0)
        if not shown.all():
            detections = Detections(detections.boxes[shown], detections.scores[shown], detections.labels[shown])
        track_ids = update.track_ids[shown]
        camera_id = runtime.camera.id
        # What a person would count: distinct confirmed starfish in view, not raw boxes (one-frame blips excluded).
        count = update.count
        runtime.frames += 1
        runtime.last_count = count
        runtime.counts.append(count)
        self._processed += 1
        self._last_frame_at = time.monotonic()
        if self._first_frame_at is None:
            self._first_frame_at = self._last_frame_at
        if self.updates is not None:
            self.updates.on_frame(True, self._last_frame_at)
        for event in (*update.new, *update.ended):
            self._store_track_event(camera_id, event)
        # Always one call per frame: in `aggregate` mode the publisher folds frames into windows itself.
        payload: dict[str, Any] = {
            "ts": iso(frame.timestamp),
            "frame": frame.index,
            "count": count,
            "unique_count": update.unique_count,
            "model": _model_ref(detector),
        }
        if self.cfg.mqtt.counts.include_detections and self.cfg.mqtt.counts.mode == "per_frame":
            payload["detections"] = [
                {
                    "x1": round(float(b[0]), 1),
                    "y1": round(float(b[1]), 1),
                    "x2": round(float(b[2]), 1),
                    "y2": round(float(b[3]), 1),
                    "score": round(float(s), 4),
                    "track_id": int(t) if t >= 0 else None,
                }
                for b, s, t in zip(detections.boxes, detections.scores, track_ids, strict=True)
            ]
        try:
            # Queued for the outbox's group commit: the frame never waits for the disk. A write that fails later
            # (disk full) is counted and logged by the publisher (`not_stored` in stats); detection goes on.
            self.publisher.publish_counts(camera_id, payload, wait=False)
        except OutboxError as exc:
            self._not_queued(exc)
        self.publisher.publish_count_value(camera_id, count, update.unique_count)
        self._evidence.offer(runtime, frame, detections, track_ids)

    def _apply_resets(self) -> None:
        while True:
            try:
                camera_id = self._resets.get_nowait()
            except queue.Empty:
                return
            runtime = self.cameras[camera_id]
            for event in runtime.tracker.reset():
                self._store_track_event(camera_id, event)
            log, suppressed = self._command_log.allow(f"reset:{camera_id}")
            if log:
                more = f" ({suppressed} more resets since the last report)" if suppressed else ""
                logger.info("camera %s: unique count reset%s", camera_id, more)

    def _store_track_event(self, camera_id: str, event: dict) -> None:
        try:
            self.publisher.publish_track_event(camera_id, event, wait=False)
        except OutboxError as exc:
            self._not_queued(exc)

    def _not_queued(self, exc: OutboxError) -> None:
        # The outbox writer is gone (only during shutdown): count it like a failed write, keep going.
        self.publish_errors += 1
        if self.publish_errors == 1 or self.publish_errors % 100 == 0:
            logger.error("message not stored (%d so far): %s", self.publish_errors, exc)

    def _apply_flushes(self) -> None:
        while True:
            try:
                camera_id = self._flushes.get_nowait()
            except queue.Empty:
                return
            self._flush_tracks(self.cameras[camera_id], "camera offline")

    def _flush_tracks(self, runtime: CameraRuntime, why: str) -> None:
        ended = runtime.tracker.flush()
        for event in ended:
            self._store_track_event(runtime.camera.id, event)
        if ended:
            logger.info("camera %s: %s, %d track(s) ended", runtime.camera.id, why, len(ended))

    # -- callbacks from other threads ----------------------------------------------------------------------------
    def _on_camera_status(self, camera_id: str, state: CameraState) -> None:
        word = _MQTT_CAMERA_STATE.get(state)
        if word is not None:
            self.publisher.set_camera_status(camera_id, word)
        if state is CameraState.OFFLINE and camera_id in self.cameras:
            self._flushes.put(camera_id)  # the inference loop owns the tracker
        self._wakeup.set()

    def _on_command(self, topic: str, payload: bytes) -> None:
        """Inbound commands (already size/shape-checked by the publisher's inbound gate).

        `…/{camera_id}/reset` restarts that camera's unique count. Model announcements (`…/model/set`, the fleet
        topic) go to the update worker's queue (verified there, never on this thread); without an `updates`
        configuration they are only logged.
        """
        levels = topic.split("/")
        if len(levels) >= 2 and levels[-1] == "reset":
            if levels[-2] in self.cameras:
                self.reset(levels[-2])
            else:
                self.commands_rejected += 1
                logger.warning("rejected reset for unknown camera %r (cameras: %s)", levels[-2], sorted(self.cameras))
            return
        if self.updates is not None:
            self.updates.submit(payload)
            return
        log, suppressed = self._command_log.allow("model")
        if log:
            more = f"; {suppressed} more since the last report" if suppressed else ""
            logger.info(
                "inbound %s (%d bytes): model updates are off (no `updates` configuration)%s",
                topic,
                len(payload),
                more,
            )

    # -- reporting -------------------------------------------------------------------------------------------------
    def _publish_model_info(self) -> None:
        info = self.slot.detector.describe()
        if self.slot.load_time_s is not None:
            info["load_time_s"] = round(self.slot.load_time_s, 3)
        self.publisher.set_model_info(info)

    def _publish_stats(self, now: float) -> None:
        cameras = {}
        for camera_id, runtime in self.cameras.items():
            stats = runtime.camera.stats()
            prev = runtime.prev_stats or (self._started, 0, 0, 0)
            span = max(now - prev[0], 1e-6)
            cameras[camera_id] = {
                "status": _MQTT_CAMERA_STATE.get(stats.state),
                "camera_fps": round((stats.frames_read - prev[1]) / span, 2),
                "processed_fps": round((runtime.frames - prev[3]) / span, 2),
                "skipped_fps": round((stats.frames_dropped - prev[2]) / span, 2),
                "reconnects": stats.reconnects,
                "frames_skipped": stats.frames_dropped,
                "frames": runtime.frames,
                "unique_count": runtime.tracker.unique_count,
            }
            if self._window_ms:
                p50, p95 = np.percentile(self._window_ms, [50, 95])
                cameras[camera_id]["inference_ms_p50"] = round(float(p50), 2)
                cameras[camera_id]["inference_ms_p95"] = round(float(p95), 2)
            runtime.prev_stats = (now, stats.frames_read, stats.frames_dropped, runtime.frames)
        self._window_ms = []
        self._last_stats = now
        payload: dict[str, Any] = {"cameras": cameras, **system_health()}
        if self._evidence.enabled:
            payload["evidence"] = self._evidence.stats()
        self.publisher.publish_stats(payload)

    def console_line(self) -> str:
        """One line for people watching the terminal: fps, counts, unique counts, broker state."""
        elapsed = max(time.monotonic() - self._started, 1e-6)
        parts = [f"{self._processed / elapsed:5.1f} fps"]
        for camera_id, runtime in self.cameras.items():
            parts.append(
                f"{camera_id}: count {runtime.last_count} unique {runtime.tracker.unique_count} "
                f"({runtime.camera.state.value})"
            )
        connected = getattr(self.publisher, "connected", None)
        depth = getattr(self.publisher, "outbox_depth", None)
        broker = "broker up" if connected else "broker DOWN"
        parts.append(f"{broker}, outbox {depth}" if depth is not None else broker)
        return " | ".join(parts)

    def summary(self) -> AgentSummary:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        cameras = []
        for camera_id, runtime in self.cameras.items():
            histogram = dict(sorted(Counter(runtime.counts).items()))
            stats = runtime.camera.stats()
            cameras.append(
                CameraSummary(
                    camera_id,
                    runtime.frames,
                    runtime.tracker.unique_count,
                    histogram,
                    max(runtime.counts, default=0),
                    stats.state.value,
                    stats.frames_dropped,
                )
            )
        p50 = float(np.percentile(self._inference_ms, 50)) if self._inference_ms else None
        fps = 0.0
        if self._first_frame_at is not None and self._processed > 1 and self._last_frame_at > self._first_frame_at:
            fps = (self._processed - 1) / (self._last_frame_at - self._first_frame_at)
        return AgentSummary(elapsed, self._processed, fps, p50, cameras)

    # -- shutdown --------------------------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        """Each step on its own: one that fails is logged and the rest still run, so `stopped` is published, the
        detector released and the outbox closed (WAL checkpointed) whatever broke before them."""
        logger.info("stopping: capture, then flushing counts and the broker connection")
        # Wait until a network open/read blocked in OpenCV has had time to return (its own timeout): a thread left
        # inside native code when the interpreter exits aborts the process (see `Camera.stop`).
        # Capped, so a long configured open timeout cannot outlast a service manager's stop timeout; a thread still
        # blocked after the cap is left to `blocked_capture_threads` (the CLI then ends the process with os._exit).
        wait = min(max((r.camera.stop_timeout_s for r in self.cameras.values()), default=0.0), CAPTURE_STOP_CAP_S)
        deadline = time.monotonic() + wait

        def stop_camera(runtime: CameraRuntime) -> None:
            runtime.camera.stop(timeout=max(0.0, deadline - time.monotonic()))

        # Each step on its own (see the docstring).
        steps: list[tuple[str, Callable[[], None]]] = [
            (f"camera {cid} stop request", runtime.camera.request_stop)  # all first: they wind down in parallel
            for cid, runtime in self.cameras.items()
        ]
        steps += [
            (f"camera {cid} stop", functools.partial(stop_camera, runtime)) for cid, runtime in self.cameras.items()
        ]
        steps += [
            (f"camera {cid} tracker flush", functools.partial(self._flush_tracks, runtime, "shutdown"))
            for cid, runtime in self.cameras.items()
        ]
        if self.updates is not None:
            # Before the publisher: an update paused here reports it, and the report still reaches the outbox.
            steps.append(("model updates", self.updates.stop))
        steps += [
            ("evidence writer", self._evidence.stop),
            ("publisher", lambda: self.publisher.stop(timeout=3.0)),
            ("detector close", self.slot.detector.close),
        ]
        steps += [(f"closer {i}", close) for i, close in enumerate(self.closers)]
        failed = 0
        for name, step in steps:
            try:
                step()
            except Exception:  # noqa: BLE001 - one broken step must not skip the others
                failed += 1
                logger.exception("shutdown step %r failed; continuing with the others", name)
        self._stopped.set()
        logger.info(
            "stopped after %d frames%s", self._processed, f" ({failed} shutdown step(s) failed)" if failed else ""
        )


class StartupError(RuntimeError):
    """The agent cannot start with this configuration (bundle refused, no back end, outbox unusable)."""


def load_detector(
    cfg: AgentConfig, bundle_path: Path | None = None, *, allow_rollback: bool | None = None
) -> tuple[Detector, float]:
    """Verify the bundle against the trusted keys and this device's anti-rollback floor, then load and warm up
    the first back end that works (`create_detector` falls through on any back-end failure).

    ``allow_rollback`` overrides `detector.allow_rollback` (the update manager's signed rollback target). A hot
    swap builds its detector with `detector_for_bundle` from the bundle the update manager verified, then calls
    `Agent.swap_detector()`; the floor rises (`commit_model`) only once the new model is committed.
    """
    from edge_agent.bundle import BundleError, load_bundle
    from edge_agent.detectors import DetectorUnavailable
    from edge_agent.device_state import DeviceState, DeviceStateError

    det = cfg.detector
    path = bundle_path or det.bundle
    started = time.perf_counter()
    try:
        bundle = load_bundle(path, det.trusted_keys)
    except BundleError as exc:
        raise StartupError(f"model bundle {path} refused: {exc}") from exc
    state_dir = Path(cfg.state_dir).resolve()
    if not bundle.is_tar and state_dir.is_relative_to(bundle.root):
        raise StartupError(
            f"state_dir {cfg.state_dir} lies inside the bundle {bundle.root}: device state must be "
            "somewhere no bundle can write"
        )
    manifest = bundle.manifest
    try:
        with DeviceState(state_dir) as state:
            state.check_rollback(
                manifest.name,
                manifest.version,
                allow_rollback=det.allow_rollback if allow_rollback is None else allow_rollback,
            )
    except BundleError as exc:
        raise StartupError(f"model bundle {path} refused: {exc}") from exc
    except DeviceStateError as exc:
        raise StartupError(str(exc)) from exc
    try:
        detector = detector_for_bundle(cfg, bundle)
    except (DetectorUnavailable, BundleError) as exc:
        raise StartupError(str(exc)) from exc
    return detector, time.perf_counter() - started


def detector_for_bundle(cfg: AgentConfig, bundle: VerifiedBundle) -> Detector:
    """Build (and warm up) the configured back end for an already verified bundle."""
    from edge_agent.detectors import DetectorOptions, create_detector

    det = cfg.detector
    options = DetectorOptions(
        score_threshold=det.score_threshold,
        min_hits=cfg.tracker.min_hits,
        threads=det.threads,
        engine_cache_dir=det.engine_cache_dir,
        state_dir=Path(cfg.state_dir).resolve(),
    )
    return create_detector(det.backends, bundle, det.variant, options)


def commit_model(cfg: AgentConfig, detector: Detector) -> int:
    """The commit point: raise this device's anti-rollback floor to the running model's version (never lowers
    it). Start-up commits once the detector has loaded and warmed up, except while an over-the-air update is in
    probation: then its commit (`UpdateManager.commit`) raises the floor, or its rollback leaves it."""
    from edge_agent.device_state import DeviceState

    manifest = detector.bundle.manifest
    with DeviceState(cfg.state_dir) as state:
        floor = state.raise_floor(manifest.name, manifest.version)
    if floor > manifest.version:
        logger.warning(
            "running %s v%d below this device's floor v%d (explicit rollback)", manifest.name, manifest.version, floor
        )
    return floor


def _prepare_updates(cfg: AgentConfig) -> tuple[AgentUpdates | None, Path | None]:
    """With an `updates` block: the update runtime, reconciled, and the bundle directory to load."""
    if cfg.updates is None:
        return None, None
    from edge_agent.bundle import BundleError
    from edge_agent.device_state import DeviceStateError
    from edge_agent.update.errors import UpdateError
    from edge_agent.update.runtime import AgentUpdates

    updates: AgentUpdates | None = None
    try:
        updates = AgentUpdates(
            cfg, make_detector=functools.partial(detector_for_bundle, cfg), agent_version=software_version()
        )
        return updates, updates.prepare()
    except (BundleError, DeviceStateError, UpdateError, OSError, ValueError) as exc:
        if updates is not None:
            updates.close()
        raise StartupError(f"model updates ({cfg.updates.models_dir}): {exc}") from exc


def build_agent(cfg: AgentConfig) -> Agent:
    """Everything `starfish agent run` needs: verified detector, durable outbox, MQTT publisher, and (when
    configured) the over-the-air update runtime."""
    from edge_agent.device_state import DeviceStateError
    from edge_agent.mqtt.publisher import AgentPublisher
    from edge_agent.outbox import Outbox

    updates, bundle_path = _prepare_updates(cfg)
    try:
        allow = True if updates is not None and updates.running_is_signed_rollback() else None
        try:
            detector, load_time = load_detector(cfg, bundle_path, allow_rollback=allow)
        except StartupError as exc:
            record = updates.in_probation() if updates is not None else None
            if updates is None or record is None:
                raise
            # The model in probation does not even load: that is its probation failing, not the device's.
            bundle_path = updates.rollback_probation(f"v{record.version} does not load at start-up: {exc}")
            detector, load_time = load_detector(cfg, bundle_path)
    except BaseException:
        if updates is not None:
            updates.close()
        raise
    try:
        outbox = Outbox(
            cfg.outbox_path,
            max_messages=cfg.outbox_max_messages,
            max_age_s=cfg.outbox_max_age_s,
            synchronous=cfg.outbox_synchronous,
        )
    except OutboxError as exc:
        detector.close()
        if updates is not None:
            updates.close()
        raise StartupError(f"outbox {cfg.outbox_path}: {exc}") from exc
    try:
        publisher = AgentPublisher(cfg.mqtt, cfg.device_id, outbox, software_version=software_version())
    except ValueError as exc:  # e.g. a password variable unset since the check: one line, exit 2, no traceback
        outbox.close()
        detector.close()
        if updates is not None:
            updates.close()
        raise StartupError(f"MQTT: {exc}") from exc
    try:
        # Last, once everything started: a start that fails later (the outbox) does not raise the floor. Not
        # during an update's probation: the floor rises only when that update commits.
        probation = updates.in_probation() if updates is not None else None
        if probation is None:
            commit_model(cfg, detector)
        else:
            logger.info("update #%d: v%d in probation; floor unchanged until commit", probation.id, probation.version)
    except DeviceStateError as exc:
        detector.close()
        outbox.close()
        if updates is not None:
            updates.close()
        raise StartupError(str(exc)) from exc
    agent = Agent(cfg, publisher, detector, load_time)
    agent.closers.append(outbox.close)
    if updates is not None:
        updates.attach(agent)
        agent.updates = updates
        agent.closers.append(updates.close)
    return agent


def software_version() -> str:
    """The installed starfish-edge version (reported in `stats` and Home Assistant's device block)."""
    try:
        return importlib.metadata.version("starfish-edge")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _model_ref(detector: Detector) -> dict:
    info = detector.describe()
    return {key: info[key] for key in ("name", "version", "variant", "backend")}


def system_health() -> dict[str, float]:
    """CPU/GPU temperature where readable (Jetson thermal zones, hwmon), CPU load and resident memory."""
    result: dict[str, float] = {}
    try:
        import psutil

        process = psutil.Process()
        result["rss_mb"] = round(process.memory_info().rss / 2**20, 1)
        result["cpu_percent"] = psutil.cpu_percent(interval=None)
    except ImportError:  # psutil is in the edge extra; without it, stats just omit these
        pass
    for zone in Path("/sys/class/thermal").glob("thermal_zone*"):
        try:
            kind = (zone / "type").read_text().strip().lower()
            celsius = int((zone / "temp").read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
        # Jetson zones are named CPU-therm / GPU-therm (or cpu-thermal / gpu-thermal on newer L4T).
        if kind.startswith("cpu") and "cpu_temp_c" not in result:
            result["cpu_temp_c"] = celsius
        elif kind.startswith("gpu") and "gpu_temp_c" not in result:
            result["gpu_temp_c"] = celsius
        elif kind.startswith("x86_pkg") and "cpu_temp_c" not in result:
            result["cpu_temp_c"] = celsius
    return result

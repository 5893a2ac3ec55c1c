"""Measurements for the agent's goals (reported, never asserted in tests): `starfish agent measure …`.

* `pipeline`: detector-only throughput on decoded frames vs end-to-end agent throughput on the same clip with the
  same bundle and back end (the agent runs as a real `starfish agent run` subprocess publishing to a real broker),
  plus the agent's peak RSS.
* `tracking`: unique-count error of the tracker on a synthetic video's true boxes and track ids, with detector-like
  noise added (misses, jitter, false positives) - what the tracker contributes to the error, independent of the
  model. With a trained bundle, the demo's summary gives the full pipeline's error.
"""

from __future__ import annotations

import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from edge_agent.config import AgentConfig, ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineResult:
    frames: int
    detector_fps: float
    agent_fps: float
    ratio: float
    agent_peak_rss_mb: float
    backend: str
    variant: str

    def to_dict(self) -> dict:
        return asdict(self)


def _decode(source: str, limit: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(source)
    frames: list[np.ndarray] = []
    while len(frames) < limit:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    if not frames:
        raise ValueError(f"{source}: no decodable frames")
    return frames


def _first_frames_clip(source: str, frames: int, out: Path) -> Path:
    """The first `frames` frames of `source` as their own file, so the agent run stops where the detector-only
    run stops (the agent has no frame limit; it ends when its file does)."""
    images = _decode(source, frames)
    capture = cv2.VideoCapture(source)
    fps = capture.get(cv2.CAP_PROP_FPS) or 10.0
    capture.release()
    height, width = images[0].shape[:2]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height))
    for image in images:
        writer.write(image)
    writer.release()
    return out


def _video_file(cfg: AgentConfig) -> Path:
    from edge_agent.capture.sources import SourceKind, classify_source

    camera = cfg.cameras[0]
    if classify_source(camera.source) is not SourceKind.FILE:
        raise ConfigError(
            f"cameras.0.source: measuring the pipeline needs a video file, camera {camera.id!r} reads "
            f"{camera.source!r} (a {classify_source(camera.source).name.lower()} source)"
        )
    path = Path(str(camera.source))
    if not path.is_file():
        raise ConfigError(f"cameras.0.source: video file {path} does not exist")
    return path


def measure_pipeline(cfg: AgentConfig, frames: int = 200, repeats: int = 3) -> PipelineResult:
    """Detector-only vs agent throughput on the first `frames` frames of the first camera's video file, and the
    agent's peak RSS.

    The two are interleaved ``repeats`` times and the medians reported, so a busy shared machine skews both alike.
    """
    video = _video_file(cfg)
    with tempfile.TemporaryDirectory(prefix="starfish-measure-clip-") as tmp:
        clip = _first_frames_clip(str(video), frames, Path(tmp) / "clip.mp4")
        camera = cfg.cameras[0].model_copy(update={"source": str(clip)})
        return _measure(cfg.model_copy(update={"cameras": [camera]}), frames, repeats)


def _measure(cfg: AgentConfig, frames: int, repeats: int) -> PipelineResult:
    detector_runs, agent_runs, peak = [], [], 0.0
    for _ in range(repeats):
        detector_fps, info = _detector_only(cfg, frames)
        agent_fps, processed, peak_mb = _agent_run(cfg, frames)
        detector_runs.append(detector_fps)
        agent_runs.append(agent_fps)
        peak = max(peak, peak_mb)
    detector_fps, agent_fps = float(np.median(detector_runs)), float(np.median(agent_runs))
    logger.info("detector-only fps %s, agent fps %s", detector_runs, agent_runs)
    return PipelineResult(
        frames=processed,
        detector_fps=round(detector_fps, 2),
        agent_fps=round(agent_fps, 2),
        ratio=round(agent_fps / detector_fps, 3),
        agent_peak_rss_mb=round(peak, 1),
        backend=info["backend"],
        variant=info["variant"],
    )


def _detector_only(cfg: AgentConfig, frames: int) -> tuple[float, dict]:
    from edge_agent.app import load_detector

    images = _decode(str(cfg.cameras[0].source), frames)
    detector, _ = load_detector(cfg)  # verified and warmed up, exactly as the agent does
    started = time.perf_counter()
    for image in images:
        detector.detect(image)
    fps = len(images) / (time.perf_counter() - started)
    info = detector.describe()
    detector.close()
    return fps, info


def _agent_run(cfg: AgentConfig, frames: int) -> tuple[float, int, float]:
    """Run `starfish agent run` on the clip in a child process; (fps, frames, its peak RSS in MB)."""
    with tempfile.TemporaryDirectory(prefix="starfish-measure-") as tmp:
        data = cfg.model_dump(mode="json", exclude_unset=False)
        data["cameras"] = [
            {**data["cameras"][0], "read_mode": "every_frame", "realtime": False, "loop": False, "enabled": True}
        ]
        data["mqtt"]["password"] = cfg.mqtt.password.get_secret_value() if cfg.mqtt.password else None
        data["outbox_path"] = str(Path(tmp) / "outbox.sqlite3")
        data["state_dir"] = str(Path(tmp) / "state")  # a measurement must not raise the device's rollback floor
        data["stop_when_sources_end"] = True
        config_path, summary_path = Path(tmp) / "agent.yaml", Path(tmp) / "summary.json"
        config_path.write_text(yaml.safe_dump(data))
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "starfish_cli",
                "agent",
                "run",
                "--config",
                str(config_path),
                "--no-console",
                "--summary-json",
                str(summary_path),
            ],
            capture_output=True,
            text=True,
            timeout=3600,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"agent run failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        summary = json.loads(summary_path.read_text())
    # The agent reports its own VmHWM; RUSAGE_CHILDREN's ru_maxrss would include this (forking) process's peak.
    peak_mb = summary.get("peak_rss_mb")
    if peak_mb is None:
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return float(summary["fps"]), int(summary["frames"]), peak_mb


TRACKERS = ("ours", "bytetrack")
SCORE_THRESHOLD = 0.5  # the simulated detector's threshold: boxes below it are "low-score"


@dataclass(frozen=True)
class TrackingResult:
    video_id: int
    tracker: str
    frames: int
    true_unique: int
    predicted_unique: int
    error: float
    miss_rate: float
    jitter_px: float
    false_positive_rate: float
    low_score_rate: float
    seed: int


class _OursAdapter:
    def __init__(self, iou_threshold: float, max_age_s: float, min_hits: int) -> None:
        from edge_agent.tracking import Tracker

        self.tracker = Tracker(iou_threshold, max_age_s, min_hits)

    def update(self, boxes: np.ndarray, scores: np.ndarray, frame: int, clock: float) -> None:
        self.tracker.update(boxes, scores, frame, clock, score_threshold=SCORE_THRESHOLD)

    def flush(self) -> None:
        self.tracker.flush()

    @property
    def unique_count(self) -> int:
        return self.tracker.unique_count


class _ByteTrackAdapter:
    """roboflow `trackers`' ByteTrackTracker (the maintained successor of supervision's ByteTrack), given the same
    thresholds: activation and high/low split at the detector threshold, `min_hits` consecutive frames, the same
    lost-track time. Evaluation only: install with `pip install --no-deps trackers` (its `opencv-python`
    requirement would put a second cv2 beside the headless one)."""

    def __init__(self, max_age_s: float, min_hits: int, fps: float) -> None:
        try:
            from trackers import ByteTrackTracker
        except ImportError as exc:
            raise RuntimeError(
                "the bytetrack comparison needs roboflow's `trackers` package: "
                "pip install supervision && pip install --no-deps trackers"
            ) from exc
        self._make = lambda: ByteTrackTracker(
            lost_track_buffer=round(max_age_s * 30),  # the library counts the buffer in 30 fps frames
            frame_rate=fps,
            track_activation_threshold=SCORE_THRESHOLD,
            high_conf_det_threshold=SCORE_THRESHOLD,
            minimum_consecutive_frames=min_hits,
        )
        self.tracker = self._make()
        self._ids: set[tuple[int, int]] = set()
        self._generation = 0

    def update(self, boxes: np.ndarray, scores: np.ndarray, frame: int, clock: float) -> None:
        import supervision as sv

        result = self.tracker.update(
            sv.Detections(xyxy=boxes.reshape(-1, 4).astype(np.float32), confidence=scores.astype(np.float32)),
            timestamp=clock,
        )
        ids = result.tracker_id if result.tracker_id is not None else np.zeros(0, int)
        self._ids.update((self._generation, int(t)) for t in ids if t >= 0)

    def flush(self) -> None:
        self.tracker = self._make()  # a new scene: ids of the next one are new starfish
        self._generation += 1

    @property
    def unique_count(self) -> int:
        return len(self._ids)


def measure_tracking(
    data_root: Path,
    video_id: int,
    *,
    tracker: str = "ours",
    miss: float = 0.1,
    jitter: float = 2.0,
    false_positives: float = 0.05,
    low_score: float = 0.0,
    iou_threshold: float = 0.2,
    max_age_s: float = 1.5,
    min_hits: int = 3,
    fps: float = 10.0,
    seed: int = 0,
) -> TrackingResult:
    """Unique-count error of ``tracker`` on a synthetic video's true boxes with detector-like noise.

    The simulated detector, per frame and true box: misses it with probability ``miss`` - and of the misses, a
    share ``low_score`` is still returned, below the threshold (score 0.1-0.45: the detector was unsure, which
    ByteTrack's second pass can use); otherwise returns it with score 0.5-1 and Gaussian ``jitter`` (px) on each
    coordinate. With probability ``false_positives`` per frame it adds a one-frame 40x40 blip at a random place.
    Tracks are flushed at every sequence change (a new pass over the reef), for every tracker alike.
    """
    from edge_agent.dataset import DatasetError, ReefDataset
    from edge_agent.metrics import true_unique_count, unique_count_error

    if tracker not in TRACKERS:
        raise ValueError(f"unknown tracker {tracker!r}; known: {', '.join(TRACKERS)}")
    dataset = ReefDataset.open(data_root)
    records = sorted((r for r in dataset.records if r.video_id == video_id), key=lambda r: r.video_frame)
    if not records:
        videos = sorted({r.video_id for r in dataset.records})
        raise DatasetError(f"{data_root}: no frames of video {video_id} (it has video ids {videos})")
    rng = np.random.default_rng(seed)
    runner: _OursAdapter | _ByteTrackAdapter = (
        _OursAdapter(iou_threshold, max_age_s, min_hits)
        if tracker == "ours"
        else _ByteTrackAdapter(max_age_s, min_hits, fps)
    )
    sequence = None
    for record in records:
        if sequence is not None and record.sequence != sequence:
            runner.flush()
        sequence = record.sequence
        n = len(record.boxes)
        missed = rng.random(n) < miss
        weak = missed & (rng.random(n) < low_score)
        keep = ~missed | weak
        boxes = record.boxes[keep] + rng.normal(0, jitter, (int(keep.sum()), 4)).astype(np.float32)
        scores = np.where(weak[keep], rng.uniform(0.1, 0.45, n)[keep], rng.uniform(0.5, 1.0, n)[keep])
        if rng.random() < false_positives:  # a one-frame blip somewhere on the frame
            x, y = rng.uniform(0, 1200), rng.uniform(0, 650)
            boxes = np.vstack([boxes, [[x, y, x + 40, y + 40]]])
            scores = np.append(scores, rng.uniform(0.5, 0.8))
        runner.update(boxes.astype(np.float32), scores.astype(np.float32), record.video_frame, record.video_frame / fps)
    truth = true_unique_count([r.track_ids for r in records])
    predicted = runner.unique_count
    return TrackingResult(
        video_id,
        tracker,
        len(records),
        truth,
        predicted,
        round(unique_count_error(predicted, truth), 4),
        miss,
        jitter,
        false_positives,
        low_score,
        seed,
    )

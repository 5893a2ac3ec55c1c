"""`starfish bench pipeline`: where the edge agent's time goes, stage by stage, on a clip.

The agent's own parts are used as configured in ``agent.yaml`` (bundle verification and back-end choice by
`edge_agent.app.load_detector`, the tracker with its configured thresholds, the real MQTT publisher with its
durable outbox); each frame passes through them one stage at a time so every stage can be timed:

``decode`` (read + decode the next frame) -> ``preprocess`` (letterbox) -> ``inference`` (the back end) ->
``postprocess`` (score filter, boxes to source pixels, tracker update) -> ``publish`` (counts written to the outbox
and queued for the broker).

In the running agent, decoding happens on the capture thread, concurrently with the rest, so two rates are
reported: the sequential end-to-end rate of this profile, and the agent's loop bound (one frame every
preprocess + inference + postprocess + publish) which is what the agent reaches when decoding keeps up.

So that profiling never pollutes a device's real data, publishing uses the device id ``<device_id>-bench`` and a
temporary outbox.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("decode", "preprocess", "inference", "postprocess", "publish")


class StageStats(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage: str
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    share: float = Field(description="Fraction of the sequential per-frame total.")


class PipelineReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = "starfish-bench-pipeline"
    schema_version: int = 1
    created_at: str
    machine: dict[str, object]
    config: str
    source: str
    backend: dict[str, object] = Field(description="The detector the agent's config selected (describe()).")
    load_s: float = Field(description="Bundle verification + detector load + warm-up, as the agent does it.")
    frames: int = Field(description="Frames timed (warm-up frames excluded).")
    warmup_frames: int
    published: bool
    stages: list[StageStats]
    sequential_fps: float = Field(description="Frames / wall time with every stage run one after the other.")
    agent_loop_fps: float = Field(
        description="1000 / mean(preprocess+inference+postprocess+publish) ms: the "
        "agent's rate when decoding (on its own thread) keeps up."
    )
    detections_per_frame: float


def profile_pipeline(
    config_path: Path,
    *,
    clip: str | None = None,
    camera_id: str | None = None,
    frames: int = 200,
    warmup_frames: int = 5,
    publish: bool = True,
    on_frame: Callable[[], None] | None = None,
) -> PipelineReport:
    """Run ``frames`` (+ warm-up) frames of the configured camera (or ``clip``) through the agent's stages."""
    from benchmarks.fingerprint import machine_fingerprint
    from edge_agent import preprocess
    from edge_agent.app import load_detector
    from edge_agent.capture import open_source
    from edge_agent.config import load_config
    from edge_agent.detectors import Detections
    from edge_agent.tracking import Tracker

    cfg = load_config(config_path)
    cameras = [c for c in cfg.cameras if c.enabled and (camera_id is None or c.id == camera_id)]
    if not cameras:
        known = ", ".join(c.id for c in cfg.cameras)
        raise ValueError(f"no enabled camera {camera_id!r} in {config_path} (cameras: {known})")
    camera = cameras[0]
    source = clip if clip is not None else camera.source
    detector, load_s = load_detector(cfg)
    tracker = Tracker(cfg.tracker.iou_threshold, cfg.tracker.max_age_s, detector.min_hits)
    info = detector.describe()
    model_ref = {key: info[key] for key in ("name", "version", "variant", "backend")}
    capture = open_source(source, camera.open_timeout_s, camera.read_timeout_s)

    with tempfile.TemporaryDirectory(prefix="starfish-pipeline-") as tmp:
        publisher, outbox = _publisher(cfg, Path(tmp), info) if publish else (None, None)
        times = {stage: [] for stage in STAGES}
        detections_seen = 0
        index = 0
        wall_start = None
        try:
            while index < warmup_frames + frames:
                if index == warmup_frames:
                    wall_start = time.perf_counter()
                t0 = time.perf_counter()
                ok, image = capture.read()
                if not ok:
                    logger.info("source ended after %d frames", index)
                    break
                t1 = time.perf_counter()
                tensor, fit = preprocess.letterbox(image, detector.input_width, detector.input_height)
                t2 = time.perf_counter()
                boxes, scores, labels = detector.infer(tensor)
                t3 = time.perf_counter()
                # The same filtering and mapping as Detector.detect (checked against it on the first frame).
                found = Detections(*preprocess.postprocess(boxes, scores, labels, fit, detector.score_threshold))
                update = tracker.update(found.boxes, found.scores, index, time.time())
                t4 = time.perf_counter()
                if publisher is not None:
                    for event in (*update.new, *update.ended):
                        publisher.publish_track_event(camera.id, event)
                    publisher.publish_counts(
                        camera.id,
                        {
                            "ts": datetime.now(timezone.utc).isoformat(),
                            "frame": index,
                            "count": len(found),
                            "unique_count": update.unique_count,
                            "model": model_ref,
                        },
                    )
                    publisher.publish_count_value(camera.id, len(found))
                t5 = time.perf_counter()
                if index == 0:
                    _check_against_detect(detector, image, found)
                if index >= warmup_frames:
                    for stage, (a, b) in zip(STAGES, ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5)), strict=True):
                        times[stage].append((b - a) * 1000)
                    detections_seen += len(found)
                    if on_frame:
                        on_frame()
                index += 1
            wall = time.perf_counter() - wall_start if wall_start is not None else 0.0
        finally:
            capture.release()
            if publisher is not None:
                publisher.stop(timeout=2.0)
                outbox.close()
            detector.close()

    timed = len(times["decode"])
    if timed == 0:
        raise ValueError(f"{source} gave no frames after the {warmup_frames} warm-up frames")
    totals = np.sum([times[s] for s in STAGES], axis=0)
    stages = [_stage_stats(stage, np.array(times[stage]), float(totals.mean())) for stage in STAGES]
    loop_ms = sum(s.mean_ms for s in stages if s.stage != "decode")
    return PipelineReport(
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        machine=machine_fingerprint(),
        config=str(config_path),
        source=str(source),
        backend=info,
        load_s=round(load_s, 3),
        frames=timed,
        warmup_frames=warmup_frames,
        published=publish,
        stages=stages,
        sequential_fps=round(timed / wall, 2) if wall > 0 else 0.0,
        agent_loop_fps=round(1000.0 / loop_ms, 2) if loop_ms > 0 else 0.0,
        detections_per_frame=round(detections_seen / timed, 3),
    )


def _publisher(cfg: object, tmp: Path, info: dict) -> tuple[object, object]:
    from edge_agent.app import software_version
    from edge_agent.mqtt.publisher import AgentPublisher
    from edge_agent.outbox import Outbox

    outbox = Outbox(tmp / "outbox.sqlite3", max_messages=cfg.outbox_max_messages, max_age_s=cfg.outbox_max_age_s)
    publisher = AgentPublisher(cfg.mqtt, f"{cfg.device_id}-bench", outbox, software_version=software_version())
    publisher.start()
    publisher.set_model_info({key: info[key] for key in ("name", "version", "variant", "backend")})
    if not publisher.wait_connected(5.0):
        logger.warning(
            "MQTT broker %s:%s not reached in 5 s: publish times cover the outbox write only",
            cfg.mqtt.host,
            cfg.mqtt.port,
        )
    return publisher, outbox


def _check_against_detect(detector: object, image: np.ndarray, staged: object) -> None:
    """Guard against this profile drifting from `Detector.detect`: the staged path must give the same boxes."""
    reference = detector.detect(image)
    if len(reference) != len(staged) or not np.allclose(reference.boxes, staged.boxes, atol=1e-3):
        raise RuntimeError("the staged pipeline disagrees with Detector.detect; benchmarks/pipeline.py is stale")


def _stage_stats(stage: str, values: np.ndarray, total_mean: float) -> StageStats:
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    mean = float(values.mean())
    return StageStats(
        stage=stage,
        mean_ms=round(mean, 3),
        p50_ms=round(float(p50), 3),
        p90_ms=round(float(p90), 3),
        p99_ms=round(float(p99), 3),
        share=round(mean / total_mean, 4) if total_mean > 0 else 0.0,
    )

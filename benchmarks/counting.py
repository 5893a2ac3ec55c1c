"""Unique-count error of the real agent on whole clips: `starfish bench counting BUNDLE --data ROOT`.

Every video of a dataset root (the synthetic generator's or the out-of-distribution renderer's; both write
``videos/video_{id}.mp4`` and ``synth.json`` with the true number of distinct starfish) becomes one camera of one
real agent (file source, every frame, not real-time) that publishes to a real broker on loopback. The agent's own
run summary gives each camera's unique count; the error is |counted - true| / true per clip, and the headline is
the error of the summed counts next to the mean and the worst per-clip error.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from edge_agent.tracking.replay import clip_paths, count_errors, true_counts

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipCount:
    video_id: int
    frames: int
    counted: int
    true: int
    error: float  # |counted - true| / max(true, 1)


@dataclass(frozen=True)
class CountingResult:
    bundle: str
    variant: str
    backend: str
    data: str
    clips: list[ClipCount]
    total_counted: int
    total_true: int
    total_error: float
    mean_clip_error: float
    worst_clip_error: float
    fps: float

    def to_dict(self) -> dict:
        return asdict(self)


def agent_detector(bundle: Path, keys: list[Path], variant: str | None, threads: int | None) -> dict:
    """The ``detector`` section of an agent config that runs ``bundle`` as the agent would, or with the variant and
    thread count a benchmark asks for."""
    detector: dict = {"bundle": str(bundle), "trusted_keys": [str(k) for k in keys]}
    if variant:
        detector["variant"] = variant
    if threads:
        detector["threads"] = threads
    return detector


def measure_counting(
    bundle: Path,
    keys: list[Path],
    root: Path,
    *,
    videos: list[int] | None,
    host: str,
    port: int,
    workdir: Path,
    variant: str | None = None,
    threads: int | None = None,
) -> CountingResult:
    """Run one agent over every requested clip of ``root`` and compare its unique counts with the truth."""
    from edge_agent.app import build_agent
    from edge_agent.config import load_config_data

    truth = true_counts(root)
    clips = clip_paths(root, truth, videos)
    wanted = list(clips)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = load_config_data(
        {
            "device_id": "bench-counting",
            "cameras": [
                {"id": f"clip{v}", "source": str(path), "read_mode": "every_frame", "realtime": False}
                for v, path in clips.items()
            ],
            "detector": agent_detector(bundle, keys, variant, threads),
            "mqtt": {"host": host, "port": port},
            "outbox_path": str(workdir / "outbox.sqlite3"),
            "state_dir": str(workdir / "state"),  # a benchmark must not raise a device's anti-rollback floor
        }
    )
    agent = build_agent(cfg)
    agent.run()
    summary = agent.summary()
    by_camera = {c.camera_id: c for c in summary.cameras}
    results = []
    for v in wanted:
        camera = by_camera[f"clip{v}"]
        error = abs(camera.unique_count - truth[v]) / max(truth[v], 1)
        results.append(
            ClipCount(video_id=v, frames=camera.frames, counted=camera.unique_count, true=truth[v], error=error)
        )
        logger.info("clip %d: counted %d, true %d (error %.0f %%)", v, camera.unique_count, truth[v], 100 * error)
    total_error, mean_clip_error, worst_clip_error = count_errors({c.video_id: c.counted for c in results}, truth)
    running = agent.slot.detector
    return CountingResult(
        bundle=str(bundle),
        variant=str(getattr(running, "variant", variant or "")),
        backend=str(getattr(running, "name", "")),
        data=str(root),
        clips=results,
        total_counted=sum(c.counted for c in results),
        total_true=sum(c.true for c in results),
        total_error=total_error,
        mean_clip_error=mean_clip_error,
        worst_clip_error=worst_clip_error,
        fps=summary.fps,
    )

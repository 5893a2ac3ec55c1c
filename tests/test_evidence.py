"""Snapshots and annotated video on a real filesystem: quota with oldest-first retention, the statvfs free-space
guard, video segments, and a writer thread that survives bad frames and never hangs `stop()`."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edge_agent.capture import Frame
from edge_agent.config import EvidenceLimits, SnapshotConfig, VideoOutputConfig
from edge_agent.detectors import Detections
from edge_agent.evidence import EvidenceWriter, free_bytes
from tests.helpers.mqtt_broker import wait_until

MB = 1024 * 1024


def _frame(index: int, ts: float, rng: np.random.Generator) -> Frame:
    image = rng.integers(0, 255, (192, 320, 3), dtype=np.uint8)  # noise: ~100 KB per JPEG, fills a quota fast
    return Frame("cam0", index, ts, image, ts, 0)


def _detections(box: tuple[float, float, float, float] = (10, 10, 60, 60)) -> tuple[Detections, np.ndarray]:
    return Detections(np.array([box], np.float32), np.array([0.9], np.float32), np.array([1])), np.array([1])


def _stop_within(writer: EvidenceWriter, seconds: float) -> float:
    """`writer.stop()` on a helper thread, so that a hang fails the test instead of freezing it."""
    started = time.monotonic()
    stopper = threading.Thread(target=writer.stop, daemon=True)
    stopper.start()
    stopper.join(seconds)
    assert not stopper.is_alive(), "EvidenceWriter.stop() hung"
    return time.monotonic() - started


def _offer_all(writer: EvidenceWriter, frames: list[Frame], detections, track_ids) -> None:
    runtime = SimpleNamespace(last_snapshot=0.0)
    for frame in frames:
        # Wait for room instead of dropping, so every frame is written (the agent itself drops when busy).
        assert wait_until(lambda: writer._queue.qsize() < 4, 10)
        writer.offer(runtime, frame, detections, track_ids)


def test_quota_deletes_oldest_first_including_earlier_runs(tmp_path: Path) -> None:
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    old = []
    for i in range(3):  # left by an earlier run, a day old
        path = snaps / f"cam0_old{i}_boxes.jpg"
        path.write_bytes(os.urandom(50_000))
        os.utime(path, (time.time() - 86400 + i, time.time() - 86400 + i))
        old.append(path)
    keep_me = snaps / "notes.txt"  # not evidence: never touched
    keep_me.write_text("operator notes")
    writer = EvidenceWriter(
        SnapshotConfig(enabled=True, directory=snaps, min_interval_s=0),
        VideoOutputConfig(),
        EvidenceLimits(max_total_mb=1.0, min_free_mb=0),
    )
    writer.start()
    rng = np.random.default_rng(0)
    frames = [_frame(i, 1_700_000_000 + i, rng) for i in range(30)]
    _offer_all(writer, frames, *_detections())
    _stop_within(writer, 10)
    files = [p for p in snaps.iterdir() if p.suffix == ".jpg"]
    total = sum(p.stat().st_size for p in files)
    assert total <= 1.0 * MB, total
    assert not any(p.exists() for p in old)  # the oldest went first
    assert keep_me.exists()
    newest = "cam0_20231114T221349_000000Z_f29"  # the last frame's snapshot pair survives
    assert (snaps / f"{newest}_boxes.jpg").exists() and (snaps / f"{newest}.jpg").exists()
    assert writer.deleted > 3 and writer.snapshots_written == 30 and writer.errors == 0
    assert writer.stats()["bytes"] == total


def test_video_is_segmented_and_old_segments_are_dropped(tmp_path: Path) -> None:
    video = tmp_path / "video"
    writer = EvidenceWriter(
        SnapshotConfig(),
        VideoOutputConfig(enabled=True, directory=video, fps=10, segment_s=2),
        EvidenceLimits(max_total_mb=0.9, min_free_mb=0),
    )
    writer.start()
    rng = np.random.default_rng(1)
    frames = [_frame(i, 1_700_000_000 + i * 0.5, rng) for i in range(60)]  # 30 s: 15 segments of 2 s
    _offer_all(writer, frames, *_detections())
    _stop_within(writer, 10)
    segments = sorted(video.glob("cam0_*.mp4"))
    assert 1 <= len(segments) < 15 and writer.deleted >= 1
    assert segments[-1].name == "cam0_20231114T221348Z.mp4"  # the newest segment (t = 28 s) is kept
    assert sum(p.stat().st_size for p in segments) <= 0.9 * MB


def test_low_free_space_pauses_evidence_and_it_resumes(tmp_path: Path) -> None:
    """A real statvfs check: the threshold is set above the real free space, so evidence must stop."""
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    above = free_bytes(snaps) / MB + 1024
    limits = EvidenceLimits(min_free_mb=above, check_interval_s=0.05)
    writer = EvidenceWriter(
        SnapshotConfig(enabled=True, directory=snaps, min_interval_s=0), VideoOutputConfig(), limits
    )
    writer.start()
    assert writer.paused
    rng = np.random.default_rng(2)
    runtime = SimpleNamespace(last_snapshot=0.0)
    detections, ids = _detections()
    for i in range(5):
        writer.offer(runtime, _frame(i, 1_700_000_000 + i, rng), detections, ids)
    time.sleep(0.2)
    assert list(snaps.iterdir()) == [] and writer.skipped_low_space == 5 and writer.stats()["paused_low_space"]
    # Space is back (here: the threshold lowered below the real free space): the next frames are written again.
    limits.min_free_mb = 0
    time.sleep(0.1)
    _offer_all(writer, [_frame(10 + i, 1_700_000_100 + i, rng) for i in range(2)], detections, ids)
    _stop_within(writer, 10)
    assert not writer.paused and writer.snapshots_written == 2


def test_writer_survives_bad_frames_and_stop_never_hangs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A NaN box (a broken model output) raises ValueError while drawing. The thread must log it, count it and go
    on with the next frame; `stop()` must return even though far more items than the queue holds were offered."""
    snaps = tmp_path / "snaps"
    writer = EvidenceWriter(
        SnapshotConfig(enabled=True, directory=snaps, min_interval_s=0),
        VideoOutputConfig(),
        EvidenceLimits(min_free_mb=0),
    )
    writer.start()
    rng = np.random.default_rng(3)
    runtime = SimpleNamespace(last_snapshot=0.0)
    bad, ids = _detections((np.nan, 10, 60, 60))
    for i in range(30):
        writer.offer(runtime, _frame(i, 1_700_000_000 + i, rng), bad, ids)
    assert wait_until(lambda: writer.errors >= 1, 10)
    _offer_all(writer, [_frame(99, 1_700_000_099, rng)], *_detections())
    assert wait_until(lambda: writer.snapshots_written == 1, 10)
    assert _stop_within(writer, 8) < 6
    assert writer.errors >= 1 and "writing evidence failed" in caplog.text and "ValueError" in caplog.text
    assert not writer.alive


def test_stop_returns_when_the_thread_is_gone(tmp_path: Path) -> None:
    """Even a dead writer thread (killed by something no handler catches) must not hang shutdown."""
    writer = EvidenceWriter(
        SnapshotConfig(enabled=True, directory=tmp_path, min_interval_s=0),
        VideoOutputConfig(),
        EvidenceLimits(min_free_mb=0),
    )
    writer.start()
    writer._queue.put(None)  # the thread ends, as if it had died
    assert wait_until(lambda: not writer.alive, 5)
    rng = np.random.default_rng(4)
    runtime = SimpleNamespace(last_snapshot=0.0)
    for i in range(20):  # fills the bounded queue: nobody is reading it any more
        writer.offer(runtime, _frame(i, 1_700_000_000 + i, rng), *_detections())
    assert writer.dropped > 0
    assert _stop_within(writer, 8) < 1


@pytest.mark.mqtt
def test_agent_keeps_counting_with_evidence_paused_for_low_space(tmp_path: Path, clip, agent_bundle, mosquitto) -> None:
    from edge_agent.app import build_agent
    from edge_agent.config import load_config_data
    from tests.helpers.agent import agent_config

    snaps = tmp_path / "snaps"
    snaps.mkdir()
    cfg = agent_config(
        tmp_path,
        agent_bundle,
        clip.path,
        mosquitto.port,
        detector={"score_threshold": 0.0},
        snapshots={"enabled": True, "directory": str(snaps), "min_interval_s": 0},
        evidence={"min_free_mb": free_bytes(snaps) / MB + 1024},
    )
    agent = build_agent(load_config_data(cfg))
    assert agent.run() == 0
    assert agent.summary().frames == clip.frames  # every frame counted
    assert list(snaps.iterdir()) == []
    assert agent._evidence.paused and agent._evidence.skipped_low_space == clip.frames

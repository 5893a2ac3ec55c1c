"""Capture threads on real video files and devices: hand-off semantics, rate limits, failures and recovery."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge_agent.capture import Camera, CameraState, SourceKind, classify_source
from edge_agent.capture.sources import SourceError, open_source
from edge_agent.config import CameraConfig
from tests.helpers.agent import Clip, make_clip
from tests.helpers.mqtt_broker import wait_until


def _camera(source: object, **kwargs: object) -> tuple[Camera, list[CameraState]]:
    states: list[CameraState] = []
    cfg = CameraConfig(id="cam0", source=source, reconnect_initial_s=0.05, reconnect_max_s=0.2, **kwargs)
    return Camera(cfg, on_status=lambda _id, state: states.append(state)), states


def _drain(camera: Camera, timeout: float = 20.0) -> list:
    frames = []
    deadline = time.monotonic() + timeout
    while not camera.finished and time.monotonic() < deadline:
        frame = camera.get(timeout=0.5)
        if frame is not None:
            frames.append(frame)
    return frames


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        (0, SourceKind.DEVICE),
        ("2", SourceKind.DEVICE),
        ("/dev/video1", SourceKind.DEVICE),
        ("rtsp://user:pw@10.0.0.2:554/s", SourceKind.STREAM),
        ("udp://127.0.0.1:5000", SourceKind.STREAM),
        ("http://cam.local/video.mjpg", SourceKind.STREAM),
        ("nvarguscamerasrc sensor-id=0 ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! appsink",
         SourceKind.GSTREAMER),
        ("videos/video_0.mp4", SourceKind.FILE),
    ],
)
def test_classify_source(source: object, kind: SourceKind) -> None:
    assert classify_source(source) is kind


def test_every_frame_mode_delivers_all_frames_in_order(clip: Clip) -> None:
    camera, states = _camera(str(clip.path), read_mode="every_frame")
    camera.start()
    frames = _drain(camera)
    camera.stop()
    assert [f.index for f in frames] == list(range(clip.frames))
    assert frames[0].image.shape == (clip.height, clip.width, 3)
    stats = camera.stats()
    assert (stats.frames_read, stats.frames_dropped, stats.frames_delivered) == (clip.frames, 0, clip.frames)
    assert states == [CameraState.ONLINE, CameraState.FINISHED]


def test_latest_frame_semantics_drop_stale_frames(clip: Clip) -> None:
    # Unpaced file reads are much faster than this 30 ms "inference": stale frames must be dropped, never queued.
    camera, _ = _camera(str(clip.path), read_mode="latest", realtime=False)
    camera.start()
    frames, lags = [], []
    while not camera.finished:
        frame = camera.get(timeout=0.5)
        if frame is None:
            continue
        lags.append(camera.stats().frames_read - 1 - frame.index)  # how many newer frames exist already
        frames.append(frame)
        time.sleep(0.03)
    camera.stop()
    stats = camera.stats()
    indices = [f.index for f in frames]
    assert indices == sorted(set(indices))
    assert stats.frames_dropped > 0
    assert stats.frames_read == clip.frames
    assert stats.frames_dropped + stats.frames_delivered == stats.frames_read
    # Latency never builds up: a frame handed over is at most the one or two newest, not a backlog.
    assert max(lags) <= 2


def test_target_fps_skips_frames(tmp_path: Path) -> None:
    fast = make_clip(tmp_path / "fast.mp4", frames=40, fps=20)
    camera, _ = _camera(str(fast.path), read_mode="every_frame", realtime=True, target_fps=5)
    camera.start()
    frames = _drain(camera)
    camera.stop()
    stats = camera.stats()
    # 40 frames paced at 20 fps = 2 s of video -> ~10 frames at 5 fps (allow scheduling noise).
    assert 6 <= len(frames) <= 14
    assert stats.frames_skipped == fast.frames - len(frames)


def test_loop_restarts_the_file(tmp_path: Path) -> None:
    short = make_clip(tmp_path / "short.mp4", frames=10)
    camera, states = _camera(str(short.path), read_mode="every_frame", loop=True)
    camera.start()
    frames = [f for f in (camera.get(timeout=2) for _ in range(25)) if f is not None]
    camera.stop()
    assert len(frames) == 25
    assert [f.index for f in frames] == list(range(25))  # frame numbers keep growing across loops
    assert CameraState.FINISHED not in states


def test_missing_file_goes_offline_and_keeps_retrying(tmp_path: Path) -> None:
    camera, states = _camera(str(tmp_path / "nope.mp4"))
    camera.start()
    assert wait_until(lambda: camera.state is CameraState.OFFLINE, 5)
    assert "does not exist" in camera.last_error
    # The file appears later (copied in): the camera recovers by itself.
    make_clip(tmp_path / "nope.mp4", frames=5)
    assert wait_until(lambda: camera.state in (CameraState.ONLINE, CameraState.FINISHED), 10)
    camera.stop()
    assert states[0] is CameraState.OFFLINE and CameraState.ONLINE in states


def test_corrupt_file_reports_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    with pytest.raises(SourceError, match="cannot be decoded"):
        open_source(str(bad))
    camera, _ = _camera(str(bad))
    camera.start()
    assert wait_until(lambda: camera.state is CameraState.OFFLINE, 5)
    assert "corrupt.mp4" in camera.last_error and "cannot be decoded" in camera.last_error
    started = time.monotonic()
    camera.stop()
    assert time.monotonic() - started < 3


def test_truncated_file_yields_what_it_has_or_a_clear_error(tmp_path: Path, clip: Clip) -> None:
    truncated = tmp_path / "truncated.mp4"
    data = clip.path.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    camera, _ = _camera(str(truncated), read_mode="every_frame")
    camera.start()
    assert wait_until(lambda: camera.state in (CameraState.OFFLINE, CameraState.FINISHED), 10)
    if camera.state is CameraState.OFFLINE:  # OpenCV's mp4 writer puts the index at the end: unreadable header
        camera.stop()
        assert "cannot be decoded" in camera.last_error
    else:
        frames = _drain(camera, timeout=5)
        camera.stop()
        assert len(frames) < clip.frames


def test_nonexistent_device_index_is_offline_not_fatal() -> None:
    camera, states = _camera(57)
    camera.start()
    assert wait_until(lambda: camera.state is CameraState.OFFLINE, 5)
    assert "/dev/video57 does not exist" in camera.last_error
    assert camera._thread is not None and camera._thread.is_alive()  # still retrying with backoff
    camera.stop()
    assert states == [CameraState.OFFLINE]


def test_disabled_camera_never_opens() -> None:
    camera, states = _camera(57, enabled=False)
    camera.start()
    assert camera.finished
    assert states == [CameraState.DISABLED]
    assert camera.get(timeout=0.1) is None

"""Capture threads on real video files and devices: hand-off semantics, rate limits, failures and recovery."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
        (
            "nvarguscamerasrc sensor-id=0 ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! appsink",
            SourceKind.GSTREAMER,
        ),
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


def test_reconnect_backoff_grows_for_a_stream_that_keeps_dropping() -> None:
    """A real HTTP MJPEG camera on loopback that closes every connection after 3 frames: each reconnect waits
    twice as long as the one before (the delay is reset only by a connection that stayed up), although frames
    keep arriving."""
    from tests.helpers.streams import MjpegServer

    server = MjpegServer(frames_per_connection=3)
    cfg = CameraConfig(
        id="cam0",
        source=server.url,
        reconnect_initial_s=0.1,
        reconnect_max_s=1.6,
        open_timeout_s=2.0,
        read_timeout_s=1.0,
    )
    camera = Camera(cfg)
    camera.start()
    try:
        deadline = time.monotonic() + 20
        frames = 0
        while len(server.connect_times) < 6 and time.monotonic() < deadline:
            frames += camera.get(timeout=0.2) is not None
    finally:
        camera.stop()
        server.close()
    assert frames > 0 and camera.stats().reconnects >= 5
    gaps = [b - a for a, b in zip(server.connect_times, server.connect_times[1:], strict=False)][:5]
    # Each gap is the backoff delay plus the ~0.15 s the 3 frames take: 0.25, 0.35, 0.55, 0.95, 1.75 s.
    assert gaps[3] - gaps[0] > 0.5, gaps
    assert gaps[4] > 1.4, gaps


class _CountingCapture:
    """The real cv2.VideoCapture, with its read()/grab() calls counted (a spy, not a stand-in)."""

    def __init__(self, capture: object) -> None:
        self._capture = capture
        self.reads = self.grabs = 0

    def read(self):  # noqa: ANN201 - same signature as cv2.VideoCapture.read
        self.reads += 1
        return self._capture.read()

    def grab(self) -> bool:
        self.grabs += 1
        return self._capture.grab()

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._capture, name)


def test_target_fps_grabs_the_frames_it_skips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_agent.capture import camera as camera_module

    spies: list[_CountingCapture] = []

    def _open(*args: object, **kwargs: object) -> _CountingCapture:
        spies.append(_CountingCapture(open_source(*args, **kwargs)))
        return spies[-1]

    monkeypatch.setattr(camera_module, "open_source", _open)
    fast = make_clip(tmp_path / "fast.mp4", frames=40, fps=20)
    camera, _ = _camera(str(fast.path), read_mode="every_frame", realtime=True, target_fps=5)
    camera.start()
    frames = _drain(camera)
    camera.stop()
    stats = camera.stats()
    assert stats.frames_skipped > 0 and len(frames) > 0
    spy = spies[0]
    # read() (decode + BGR copy) only for delivered frames (+1 for the end of file); grab() for every skipped one.
    assert spy.grabs - stats.frames_skipped in (0, 1), (spy.grabs, stats)
    assert spy.reads - len(frames) in (0, 1), (spy.reads, len(frames))
    assert stats.frames_read == fast.frames


def test_media_time_and_segments_follow_the_file(tmp_path: Path) -> None:
    """Files age tracks on their own clock (frame / fps), however fast they are decoded; each loop is a segment."""
    short = make_clip(tmp_path / "short.mp4", frames=10, fps=10)
    camera, _ = _camera(str(short.path), read_mode="every_frame", realtime=False, loop=True)
    camera.start()
    frames = [f for f in (camera.get(timeout=2) for _ in range(25)) if f is not None]
    camera.stop()
    assert [f.segment for f in frames] == [0] * 10 + [1] * 10 + [2] * 5
    assert [round(f.media_s, 3) for f in frames] == [round(i / 10, 3) for i in range(25)]


def test_stop_outlives_a_blocked_open() -> None:
    """An RTSP server that accepts and never answers blocks OpenCV's open; stop() waits until it has returned, so
    no thread is left inside native code when the process exits (which aborts it with exit 134)."""
    from tests.helpers.streams import SilentServer

    server = SilentServer()
    camera, _ = _camera(f"rtsp://127.0.0.1:{server.port}/stream", open_timeout_s=1.5, read_timeout_s=1.0)
    camera.start()
    time.sleep(0.3)
    started = time.monotonic()
    try:
        camera.stop()
    finally:
        server.close()
    assert not camera.thread_alive
    assert time.monotonic() - started < camera.stop_timeout_s + 0.5


_userinfo_text = st.text(st.characters(blacklist_categories=("Cs", "Zs", "Cc")), min_size=1, max_size=30)
_host = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z0-9-]{1,8}){0,2}(:[0-9]{1,5})?", fullmatch=True)
_path = st.from_regex(r"(/[A-Za-z0-9_.-]{0,10}){0,3}", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["rtsp", "rtsps", "http", "https", "rtmp"]), _userinfo_text, _userinfo_text, _host, _path)
def test_redact_hides_any_password(scheme: str, user: str, password: str, host: str, path: str) -> None:
    """Passwords holding "@", "/", ":" or anything else never reach a log line, alone or in a pipeline."""
    from edge_agent.capture.sources import describe_source, redact

    url = f"{scheme}://{user}:{password}@{host}{path}"
    assert redact(url) == f"{scheme}://***@{host}{path}"
    pipeline = f"rtspsrc location={url} latency=0 ! decodebin ! appsink"
    assert redact(pipeline) == f"rtspsrc location={scheme}://***@{host}{path} latency=0 ! decodebin ! appsink"
    assert describe_source(url) == f"stream {scheme}://***@{host}{path}"


def test_redact_hides_secret_parameters_and_leaves_plain_sources() -> None:
    from edge_agent.capture.sources import redact

    assert redact("http://cam.local/v.mjpg?user=admin&password=s3/cr:t&fps=5") == (
        "http://cam.local/v.mjpg?user=***&password=***&fps=5"
    )
    # An "@" in the query may be the end of userinfo as well: everything before it goes (safe side).
    assert redact("http://cam.local/v.mjpg?password=s3@cr") == "http://***@cr"
    assert redact("rtspsrc location=rtsp://cam/s user-id=admin user-pw=hunter2 ! appsink") == (
        "rtspsrc location=rtsp://cam/s user-id=*** user-pw=*** ! appsink"
    )
    assert redact("rtsp://10.0.0.2:554/stream1") == "rtsp://10.0.0.2:554/stream1"
    assert redact("videos/video_0.mp4") == "videos/video_0.mp4"


def test_credentials_never_reach_the_log(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    """A camera with credentials that cannot be opened: the opening line and the failure line hide them."""
    caplog.set_level("DEBUG")
    for source in (
        "rtsp://admin:hun/t@r2@127.0.0.1:1/s",
        "rtspsrc location=rtsp://admin:hunter2@127.0.0.1:1/ user-pw=hunter2 ! decodebin ! appsink",
    ):
        camera, _ = _camera(source, open_timeout_s=1.0, read_timeout_s=1.0)
        camera.start()
        assert wait_until(lambda camera=camera: camera.state is CameraState.OFFLINE, 10)
        camera.stop()
        assert "hunter2" not in (camera.last_error or "") and "hun/t" not in (camera.last_error or "")
    text = caplog.text
    assert "opening" in text and "***@127.0.0.1" in text
    assert "hunter2" not in text and "hun/t" not in text

"""The whole agent against a real Mosquitto, real onnxruntime and real video: topics, lifecycle and faults."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.app import Agent, build_agent, load_detector
from edge_agent.config import load_config_data
from tests.helpers.agent import AgentProcess, Clip, agent_config, make_clip, write_config
from tests.helpers.mqtt_broker import free_port, wait_until

pytestmark = pytest.mark.mqtt

DEVICE = "test-dev"


class AgentThread:
    """An in-process agent running `Agent.run()` on a thread (the CLI runs it on the main thread)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.agent: Agent = build_agent(load_config_data(cfg))
        self.exit_code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.exit_code = self.agent.run()

    def stop(self, timeout: float = 10.0) -> int | None:
        started = time.monotonic()
        self.agent.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "agent did not stop in time"
        self.stop_seconds = time.monotonic() - started
        return self.exit_code


def _counts(sub) -> list[dict]:
    return [m.json() for m in sub.on("/counts")]


def _device_status(sub) -> list[str]:
    return [m.payload.decode() for m in sub.on(f"{DEVICE}/status")]


def test_topics_fields_commands_and_a_missing_camera(
    tmp_path: Path, clip: Clip, agent_bundle, mosquitto, mqtt_subscriber
) -> None:
    sub = mqtt_subscriber(mosquitto, [f"starfish/{DEVICE}/#", "homeassistant/#"])
    cfg = agent_config(
        tmp_path,
        agent_bundle,
        clip.path,
        mosquitto.port,
        detector={"score_threshold": 0.0},
        stop_when_sources_end=False,
        mqtt={"stats_interval_s": 0.3},
    )
    cfg["cameras"].append({"id": "cam1", "source": 57, "reconnect_initial_s": 0.2, "reconnect_max_s": 0.5})
    runner = AgentThread(cfg)
    assert wait_until(lambda: runner.agent.cameras["cam0"].camera.finished, 60)
    assert wait_until(lambda: len(_counts(sub)) == clip.frames, 10)
    # A reset command for cam0 restarts its unique count; one for an unknown camera is rejected, not fatal.
    assert runner.agent.cameras["cam0"].tracker.unique_count > 0
    sub.client.publish(f"starfish/{DEVICE}/cam0/reset", b"", qos=1).wait_for_publish(5)
    sub.client.publish(f"starfish/{DEVICE}/cam9/reset", b"\xff" * 10, qos=1).wait_for_publish(5)
    assert wait_until(lambda: runner.agent.cameras["cam0"].tracker.unique_count == 0, 5)
    assert wait_until(lambda: runner.agent.publisher.inbound_rejected + runner.agent.commands_rejected >= 1, 5)
    assert runner.stop() == 0
    assert runner.stop_seconds < 6
    assert wait_until(lambda: _device_status(sub)[-1:] == ["stopped"], 5)

    statuses = _device_status(sub)
    assert statuses[0] == "online" and statuses[-1] == "stopped"
    counts = _counts(sub)
    assert [c["seq"] for c in counts] == list(range(counts[0]["seq"], counts[0]["seq"] + clip.frames))
    assert [c["frame"] for c in counts] == list(range(clip.frames))
    for c in counts:
        assert {
            "schema_version",
            "device_id",
            "camera_id",
            "session",
            "seq",
            "ts",
            "frame",
            "count",
            "unique_count",
            "model",
            "historical",
        } <= c.keys()
        assert c["device_id"] == DEVICE and c["camera_id"] == "cam0" and c["historical"] is False
        # `count` is the confirmed starfish in view: the boxes that carry a (confirmed) track id.
        assert c["count"] == len({d["track_id"] for d in c["detections"] if d.get("track_id") is not None})
        assert c["ts"].endswith("Z")
        assert set(c["model"]) == {"name", "version", "variant", "backend"}
        for det in c["detections"]:
            assert 0 <= det["x1"] <= det["x2"] <= clip.width and 0 <= det["y1"] <= det["y2"] <= clip.height
    assert any(d.get("track_id") for c in counts for d in c["detections"])
    assert [int(m.payload) for m in sub.on("/cam0/count")][-1] == counts[-1]["count"]
    model = sub.on(f"{DEVICE}/model")[-1].json()
    assert model["backend"] == "onnxruntime" and model["load_time_s"] > 0
    cam0 = [m.payload.decode() for m in sub.on("/cam0/status")]
    cam1 = [m.payload.decode() for m in sub.on("/cam1/status")]
    assert cam0[0] == "online" and cam0[-1] == "disabled"  # a finished clip is not "reconnecting"
    assert cam1 and set(cam1) == {"offline"}  # /dev/video57: offline, retried, never fatal
    events = [m.json() for m in sub.on("/cam0/tracks")]
    assert {e["event"] for e in events} == {"new", "end"}
    assert {"track_id", "first_seen", "last_seen", "frames", "max_score"} <= events[0].keys()
    stats = [m.json() for m in sub.on(f"{DEVICE}/stats")]
    assert stats and {"camera_fps", "processed_fps", "skipped_fps"} <= stats[0]["cameras"]["cam0"].keys()
    assert "rss_mb" in stats[-1] and "outbox_depth" in stats[-1]
    assert any(m.topic.startswith("homeassistant/sensor/") and m.topic.endswith("/config") for m in sub.messages)


def test_hot_swap_keeps_capture_and_publishing_running(
    tmp_path: Path, clip: Clip, agent_bundle, mosquitto, mqtt_subscriber
) -> None:
    sub = mqtt_subscriber(mosquitto, [f"starfish/{DEVICE}/#"])
    # Without ByteTrack's low-score pass: with it, tracks confirmed before the swap would rightly live on from the
    # untrained model's below-threshold boxes (tests/test_tracking.py covers that), and `count` would not drop to 0.
    cfg = agent_config(tmp_path, agent_bundle, clip.path, mosquitto.port, tracker={"low_score_threshold": None})
    cfg["cameras"][0]["loop"] = True
    runner = AgentThread(cfg)
    assert wait_until(lambda: len(_counts(sub)) >= 10, 30)
    swap_cfg = load_config_data({**cfg, "detector": {**cfg["detector"], "score_threshold": 0.99}})
    new_detector, seconds = load_detector(swap_cfg)  # loaded and warmed up while the old one keeps running
    before = len(_counts(sub))
    runner.agent.swap_detector(new_detector, seconds)
    assert runner.agent.slot.detector is new_detector
    assert wait_until(lambda: len(_counts(sub)) >= before + 10, 30)
    assert runner.stop() == 0
    assert wait_until(lambda: _device_status(sub)[-1:] == ["stopped"], 5)
    seqs = [c["seq"] for c in _counts(sub)]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gap across the swap
    assert len(sub.on(f"{DEVICE}/model")) >= 2
    assert _counts(sub)[-1]["count"] == 0  # the new threshold (0.99) is in force


def test_sigterm_exits_zero_with_stopped_and_kill9_fires_the_last_will(
    tmp_path: Path, clip: Clip, agent_bundle, mosquitto, mqtt_subscriber
) -> None:
    sub = mqtt_subscriber(mosquitto, [f"starfish/{DEVICE}/status"])
    cfg = agent_config(tmp_path, agent_bundle, clip.path, mosquitto.port)
    cfg["cameras"][0].update(loop=True, read_mode="latest")
    config = write_config(tmp_path / "agent.yaml", cfg)

    first = AgentProcess(config, tmp_path / "first.log")
    assert wait_until(lambda: _device_status(sub)[-1:] == ["online"], 60), first.log()
    time.sleep(1.0)
    started = time.monotonic()
    assert first.terminate(timeout=15) == 0, first.log()
    assert time.monotonic() - started < 8
    assert wait_until(lambda: _device_status(sub)[-1:] == ["stopped"], 5)

    second = AgentProcess(config, tmp_path / "second.log")
    assert wait_until(lambda: _device_status(sub)[-1:] == ["online"], 60), second.log()
    second.kill9()
    # The broker sees the socket close without DISCONNECT and publishes the Last Will.
    assert wait_until(lambda: _device_status(sub)[-1:] == ["offline"], 15)


def test_tracks_never_span_a_file_loop(tmp_path: Path, clip: Clip, agent_bundle, mosquitto, mqtt_subscriber) -> None:
    """A looping file is a new scene each time: its tracks end at the loop (`end` events), none bridges it."""
    sub = mqtt_subscriber(mosquitto, [f"starfish/{DEVICE}/cam0/tracks"])
    cfg = agent_config(
        tmp_path,
        agent_bundle,
        clip.path,
        mosquitto.port,
        detector={"score_threshold": 0.0},
        stop_when_sources_end=False,
    )
    cfg["cameras"][0].update(loop=True, realtime=False)
    runner = AgentThread(cfg)
    runtime = runner.agent.cameras["cam0"]
    spanning, ends_before_loop = [], None
    deadline = time.monotonic() + 60
    while runtime.frames < 2 * clip.frames + 10 and time.monotonic() < deadline:
        for track in runtime.tracker.tracks:  # a copy; the inference loop owns the tracker
            if track.first_frame // clip.frames != track.last_frame // clip.frames:
                spanning.append((track.track_id, track.first_frame, track.last_frame))
        if ends_before_loop is None and runtime.frames >= clip.frames - 2:
            ends_before_loop = len([m for m in sub.on("/tracks") if m.json()["event"] == "end"])
        time.sleep(0.01)
    assert runner.stop() == 0
    assert runtime.frames >= 2 * clip.frames + 10
    assert spanning == []
    ends = [m.json() for m in sub.on("/tracks") if m.json()["event"] == "end"]
    news = [m.json() for m in sub.on("/tracks") if m.json()["event"] == "new"]
    assert ends_before_loop is not None and len(ends) > ends_before_loop  # the loops ended tracks
    assert {e["track_id"] for e in ends} == {e["track_id"] for e in news}


def test_tracks_end_when_a_camera_goes_offline(tmp_path: Path, agent_bundle, mosquitto, mqtt_subscriber) -> None:
    """A loopback MJPEG camera that drops after 15 frames and stays away for 2 s (longer than max_age_s): its tracks
    end at once (`end` events while it is offline) instead of waiting for frames that do not come."""
    from edge_agent.capture import CameraState
    from tests.helpers.streams import MjpegServer

    server = MjpegServer(frames_per_connection=15)
    sub = mqtt_subscriber(mosquitto, [f"starfish/{DEVICE}/cam0/tracks"])
    cfg = agent_config(
        tmp_path,
        agent_bundle,
        server.url,
        mosquitto.port,
        detector={"score_threshold": 0.0},
        stop_when_sources_end=False,
        tracker={"max_age_s": 0.5, "min_hits": 2},
    )
    cfg["cameras"][0].update(read_mode="latest", reconnect_initial_s=2.0, reconnect_max_s=4.0, read_timeout_s=1.0)
    runner = AgentThread(cfg)
    runtime = runner.agent.cameras["cam0"]
    try:
        assert wait_until(lambda: runtime.tracker.unique_count > 0, 30)
        assert wait_until(lambda: runtime.camera.state is CameraState.OFFLINE, 15)
        assert wait_until(lambda: runtime.tracker.tracks == [], 1.0)  # flushed while offline, not on the next frame
        assert runtime.camera.state is CameraState.OFFLINE
        assert wait_until(lambda: any(m.json()["event"] == "end" for m in sub.on("/tracks")), 5)
    finally:
        assert runner.stop() == 0
        server.close()


@pytest.mark.parametrize("open_timeout_s", [4.0, 14.0], ids=["open-returns-during-shutdown", "open-outlasts-cap"])
def test_sigterm_while_a_network_camera_is_blocked_in_open_exits_cleanly(
    tmp_path: Path, agent_bundle, mosquitto, mqtt_subscriber, open_timeout_s: float
) -> None:
    """An RTSP server on loopback that accepts and never answers keeps OpenCV's open blocked. SIGTERM then must
    not abort the process ("terminate called without an active exception", exit 134): the agent waits for the
    open to return (4 s) or, past its cap (14 s), exits with os._exit once everything is flushed."""
    from edge_agent.app import CAPTURE_STOP_CAP_S
    from tests.helpers.streams import SilentServer

    server = SilentServer()
    sub = mqtt_subscriber(mosquitto, [f"starfish/{DEVICE}/status"])
    cfg = agent_config(
        tmp_path, agent_bundle, f"rtsp://127.0.0.1:{server.port}/stream", mosquitto.port, stop_when_sources_end=False
    )
    cfg["cameras"][0].update(open_timeout_s=open_timeout_s, read_timeout_s=2.0)
    proc = AgentProcess(write_config(tmp_path / "agent.yaml", cfg), tmp_path / "agent.log")
    try:
        assert wait_until(lambda: _device_status(sub)[-1:] == ["online"], 60), proc.log()
        assert wait_until(lambda: "opening stream" in proc.log(), 10), proc.log()
        time.sleep(0.3)  # the capture thread is now inside VideoCapture's open
        started = time.monotonic()
        code = proc.terminate(timeout=40)
        elapsed = time.monotonic() - started
    finally:
        server.close()
    log = proc.log()
    assert code == 0, log
    assert "terminate called" not in log
    assert elapsed < CAPTURE_STOP_CAP_S + 8, elapsed
    assert wait_until(lambda: _device_status(sub)[-1:] == ["stopped"], 5)
    if open_timeout_s > CAPTURE_STOP_CAP_S:
        assert "still blocked in OpenCV; exiting without waiting" in " ".join(log.split())  # rich wraps lines


@pytest.mark.slow
def test_power_cut_loses_no_seq_and_seq_continues(
    tmp_path: Path, clip: Clip, agent_bundle, mosquitto, mqtt_subscriber
) -> None:
    sub = mqtt_subscriber(mosquitto, [f"starfish/{DEVICE}/+/counts"], durable=True, client_id="power-cut-sub")
    cfg = agent_config(tmp_path, agent_bundle, clip.path, mosquitto.port)
    cfg["cameras"][0]["loop"] = True
    config = write_config(tmp_path / "agent.yaml", cfg)

    first = AgentProcess(config, tmp_path / "first.log")
    assert wait_until(lambda: len(sub.seqs()) >= 30, 60), first.log()
    first.kill9()
    first_session = {m["seq"]: m["session"] for m in _counts(sub)}
    second = AgentProcess(config, tmp_path / "second.log")
    assert wait_until(lambda: any(c["session"] > max(first_session.values()) for c in _counts(sub)), 60), second.log()
    time.sleep(1.0)
    assert second.terminate() == 0, second.log()
    assert wait_until(lambda: len(sub.seqs()) >= max(sub.seqs()) - min(sub.seqs()) + 1, 10)

    seqs = set(sub.seqs())
    assert seqs == set(range(1, max(seqs) + 1)), f"missing: {sorted(set(range(1, max(seqs) + 1)) - seqs)}"
    sessions = {c["session"] for c in _counts(sub)}
    assert len(sessions) == 2
    new_session = max(sessions)
    first_new_seq = min(c["seq"] for c in _counts(sub) if c["session"] == new_session)
    assert first_new_seq > max(s for s, sess in first_session.items() if sess < new_session)


@pytest.mark.slow
def test_broker_outages_three_times_lose_nothing(
    tmp_path: Path, clip: Clip, agent_bundle, mosquitto, mqtt_subscriber
) -> None:
    sub = mqtt_subscriber(mosquitto, [f"starfish/{DEVICE}/+/counts"], durable=True, client_id="outage-sub")
    cfg = agent_config(tmp_path, agent_bundle, clip.path, mosquitto.port)
    cfg["cameras"][0].update(loop=True, read_mode="every_frame", realtime=True)  # ~10 fps, like a camera
    runner = AgentThread(cfg)
    assert wait_until(lambda: len(sub.seqs()) >= 5, 30)
    for _ in range(3):
        mosquitto.stop()
        time.sleep(1.5)  # the agent keeps detecting; counts go to the outbox
        assert runner.agent.publisher.outbox_depth > 0
        mosquitto.start()
        assert wait_until(lambda: runner.agent.publisher.connected, 15)
        time.sleep(1.0)
    assert runner.stop() == 0
    processed = runner.agent.summary().frames
    assert wait_until(lambda: len(set(sub.seqs())) >= processed, 15)
    seqs = set(sub.seqs())
    assert seqs == set(range(1, max(seqs) + 1)), f"missing: {sorted(set(range(1, max(seqs) + 1)) - seqs)}"
    assert len(seqs) == processed
    assert any(c["historical"] for c in _counts(sub))  # the backlog was replayed, flagged as such


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed (apt-get install ffmpeg)")
def test_stream_drop_reports_offline_and_recovers(tmp_path: Path, agent_bundle, mosquitto, mqtt_subscriber) -> None:
    clip = make_clip(tmp_path / "stream.mp4", frames=40, fps=10)
    port = free_port()
    url = f"udp://127.0.0.1:{port}"

    def serve() -> subprocess.Popen:
        return subprocess.Popen(
            [
                "ffmpeg",
                "-nostdin",
                "-loglevel",
                "error",
                "-re",
                "-stream_loop",
                "-1",
                "-i",
                str(clip.path),
                # mpeg2 repeats its sequence header every GOP, so a receiver can join (and re-join) mid-stream.
                "-c:v",
                "mpeg2video",
                "-q:v",
                "4",
                "-g",
                "5",
                "-f",
                "mpegts",
                f"{url}?pkt_size=1316",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    sub = mqtt_subscriber(mosquitto, [f"starfish/{DEVICE}/#"])
    cfg = agent_config(tmp_path, agent_bundle, url, mosquitto.port)
    cfg["cameras"][0].update(
        read_mode="latest", open_timeout_s=3.0, read_timeout_s=1.5, reconnect_initial_s=0.3, reconnect_max_s=1.0
    )
    server = serve()
    runner = AgentThread(cfg)
    try:
        cam_status = lambda: [m.payload.decode() for m in sub.on("/cam0/status")]  # noqa: E731
        assert wait_until(lambda: cam_status()[-1:] == ["online"] and len(_counts(sub)) >= 5, 30), cam_status()
        server.kill()
        server.wait(5)
        assert wait_until(lambda: cam_status()[-1:] == ["offline"], 15), cam_status()
        before = len(_counts(sub))
        server = serve()
        assert wait_until(lambda: cam_status()[-1:] == ["online"], 30), cam_status()
        assert wait_until(lambda: len(_counts(sub)) >= before + 5, 15)  # counting again
        assert runner.agent.cameras["cam0"].camera.stats().reconnects >= 1
    finally:
        server.kill()
        server.wait(5)
        assert runner.stop() == 0


def test_bad_signature_bundle_fails_at_startup_with_a_clear_error(tmp_path: Path, clip: Clip, agent_bundle) -> None:
    from edge_agent.bundle import generate_keypair

    generate_keypair(tmp_path / "other.pem", tmp_path / "other.pub")
    cfg = agent_config(tmp_path, agent_bundle, clip.path, free_port())
    cfg["detector"]["trusted_keys"] = [str(tmp_path / "other.pub")]
    proc = AgentProcess(write_config(tmp_path / "agent.yaml", cfg), tmp_path / "agent.log")
    assert proc.wait(60) == 2
    assert "refused" in proc.log() and "signature" in proc.log().lower()


def test_evidence_snapshots_and_video(tmp_path: Path, clip: Clip, agent_bundle, mosquitto) -> None:
    cfg = agent_config(
        tmp_path,
        agent_bundle,
        clip.path,
        mosquitto.port,
        detector={"score_threshold": 0.0},
        snapshots={"enabled": True, "directory": str(tmp_path / "snaps"), "min_interval_s": 0.5},
        video_output={"enabled": True, "directory": str(tmp_path / "video"), "fps": 10},
    )
    agent = build_agent(load_config_data(cfg))
    assert agent.run() == 0
    boxes = sorted((tmp_path / "snaps").glob("*_boxes.jpg"))
    assert 1 <= len(boxes) <= 10  # rate-limited: ~6 s of video at 1 per 0.5 s at most, but >= 1
    assert len(list((tmp_path / "snaps").glob("*.jpg"))) == 2 * len(boxes)  # annotated + raw copy
    import cv2

    segments = sorted((tmp_path / "video").glob("cam0_*.mp4"))
    assert len(segments) == 1  # one 300 s segment holds the whole clip
    video = cv2.VideoCapture(str(segments[0]))
    # The evidence queue drops frames rather than stall inference (a busy CI machine drops a few): every frame is
    # either in the video or counted as dropped, and most are in the video.
    written, dropped = int(video.get(cv2.CAP_PROP_FRAME_COUNT)), agent._evidence.stats()["dropped_busy"]
    assert written + dropped == clip.frames and written >= clip.frames // 2, (written, dropped)
    ok, frame = video.read()
    assert ok and frame.shape == (clip.height, clip.width, 3)
    raw = cv2.imread(str(sorted((tmp_path / "snaps").glob("*f0.jpg"))[0]))
    annotated = cv2.imread(str(boxes[0]))
    assert np.abs(raw.astype(int) - annotated.astype(int)).max() > 100  # red boxes drawn on the copy only
    # Every frame is in the per-frame count histogram exactly once, and the summary survives JSON as written.
    histogram = agent.summary().cameras[0].count_histogram
    assert sum(histogram.values()) == clip.frames and all(k >= 0 for k in histogram)
    assert json.loads(json.dumps(histogram)) == {str(k): v for k, v in histogram.items()}


def test_agent_runs_end_to_end_without_torch(tmp_path: Path, clip: Clip, agent_bundle, mosquitto) -> None:
    """As on a lean Jetson: the whole agent (bundle check, onnxruntime, capture, MQTT) with torch unimportable."""
    from tests.helpers.no_torch import run_without_torch

    config = write_config(tmp_path / "agent.yaml", agent_config(tmp_path, agent_bundle, clip.path, mosquitto.port))
    result = run_without_torch(
        f"""
        import sys
        from pathlib import Path
        from edge_agent.app import build_agent
        from edge_agent.config import load_config
        agent = build_agent(load_config(Path({str(config)!r})))
        assert agent.run() == 0
        assert agent.summary().frames == {clip.frames}, agent.summary()
        assert not any(name.split(".")[0] in ("torch", "torchvision") for name in sys.modules)
        print("ok")
    """,
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_aggregate_mode_summarises_windows(
    tmp_path: Path, clip: Clip, agent_bundle, mosquitto, mqtt_subscriber
) -> None:
    sub = mqtt_subscriber(mosquitto, [f"starfish/{DEVICE}/+/counts"])
    cfg = agent_config(
        tmp_path,
        agent_bundle,
        clip.path,
        mosquitto.port,
        detector={"score_threshold": 0.0},
        mqtt={"counts": {"mode": "aggregate", "interval_s": 0.5}},
    )
    cfg["cameras"][0]["realtime"] = True  # 6 s of video at 10 fps -> about a dozen windows
    assert build_agent(load_config_data(cfg)).run() == 0
    assert wait_until(lambda: sum(c["aggregate"]["frames"] for c in _counts(sub)) == clip.frames, 10)
    counts = _counts(sub)
    assert 3 <= len(counts) < clip.frames
    for c in counts:
        agg = c["aggregate"]
        assert agg["count_min"] <= agg["count_mean"] <= agg["count_max"] == c["count"]
        assert "detections" not in c


@pytest.mark.slow
def test_demo_runs_on_the_committed_bundle(tmp_path: Path, mosquitto) -> None:
    from tests.helpers.agent import REPO_ROOT

    if not (REPO_ROOT / "models" / "demo").is_dir():
        pytest.skip("models/demo is not in this checkout")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "starfish_cli",
            "agent",
            "demo",
            "--frames",
            "20",
            "--broker-port",
            str(mosquitto.port),
            "--workdir",
            str(tmp_path / "demo"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "subscriber received 20 counts messages (20 distinct seq)" in out
    assert "vs true distinct starfish in the clip" in out
    assert "<- status online" in out and "<- status stopped" in out


def test_demo_without_a_broker_says_how_to_get_one(tmp_path: Path) -> None:
    from tests.helpers.agent import REPO_ROOT

    if not (REPO_ROOT / "models" / "demo").is_dir():
        pytest.skip("models/demo is not in this checkout")
    # A closed loopback port, and the demo told not to start a broker there itself: nothing leaves the machine.
    port = free_port()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "starfish_cli",
            "agent",
            "demo",
            "--frames",
            "20",
            "--broker-host",
            "127.0.0.1",
            "--broker-port",
            str(port),
            "--no-start-broker",
            "--workdir",
            str(tmp_path / "demo"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"no MQTT broker at 127.0.0.1:{port}" in proc.stderr and "apt-get install mosquitto" in proc.stderr


def test_two_cameras_share_one_detector_with_separate_trackers(
    tmp_path: Path, clip: Clip, agent_bundle, mosquitto, mqtt_subscriber
) -> None:
    sub = mqtt_subscriber(mosquitto, [f"starfish/{DEVICE}/+/counts"])
    other = make_clip(tmp_path / "other.mp4", frames=30, seed=5)
    cfg = agent_config(tmp_path, agent_bundle, clip.path, mosquitto.port, detector={"score_threshold": 0.0})
    cfg["cameras"].append({**cfg["cameras"][0], "id": "cam1", "source": str(other.path)})
    agent = build_agent(load_config_data(cfg))
    assert agent.run() == 0  # ends by itself once both clips have ended
    assert wait_until(lambda: len(_counts(sub)) == clip.frames + other.frames, 10)
    by_camera = {cam: [c for c in _counts(sub) if c["camera_id"] == cam] for cam in ("cam0", "cam1")}
    assert [c["frame"] for c in by_camera["cam0"]] == list(range(clip.frames))
    assert [c["frame"] for c in by_camera["cam1"]] == list(range(other.frames))
    seqs = sorted(c["seq"] for c in _counts(sub))
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # one device-wide sequence across cameras
    assert agent.cameras["cam0"].tracker is not agent.cameras["cam1"].tracker


@pytest.mark.slow
def test_committed_demo_bundle_counts_a_synthetic_reef_clip_within_one(tmp_path: Path, mosquitto) -> None:
    """The shipped model, the real agent and tracker on a synthetic reef clip it never saw: unique count +-1."""
    from tests.helpers.agent import REPO_ROOT

    demo = REPO_ROOT / "models" / "demo"
    if not (demo / "bundle" / "manifest.json").is_file():
        pytest.skip("models/demo/bundle is not in this checkout")
    pytest.importorskip("train.synth")
    from train.synth.demo_clip import demo_clip

    video, truth = demo_clip(tmp_path / "clip", 100)
    assert truth is not None and truth >= 3, "the clip must hold a few starfish for the count to mean anything"
    cfg = load_config_data(
        {
            "device_id": "demo-count",
            "cameras": [{"id": "reef", "source": str(video), "read_mode": "every_frame", "realtime": False}],
            "detector": {"bundle": str(demo / "bundle"), "trusted_keys": [str(demo / "demo_key.pub")], "threads": 2},
            "mqtt": {"host": "127.0.0.1", "port": mosquitto.port},
            "outbox_path": str(tmp_path / "outbox.sqlite3"),
        }
    )
    agent = build_agent(cfg)
    assert agent.run() == 0
    camera = agent.summary().cameras[0]
    assert camera.frames == 100
    assert abs(camera.unique_count - truth) <= 1, f"counted {camera.unique_count}, truth {truth}"

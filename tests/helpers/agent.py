"""Edge-agent fixtures: small real video clips, agent configs, an agent subprocess and an MQTT recorder.

* ``make_clip(path, frames=..., ...) -> Clip``: writes a real mp4 (OpenCV, mp4v) of orange discs drifting over a
  noisy blue background, and returns the ground truth (per-frame boxes and track ids, true distinct count).
* ``clip`` (session): a 60-frame 320x192 clip made with ``make_clip``.
* ``agent_bundle`` (session): the export helper's ``tiny_bundle`` (real signed bundle, untrained Faster R-CNN).
* ``agent_config(...)`` -> dict: a complete valid agent configuration for a given broker port, clip and bundle.
* ``AgentProcess``: ``starfish agent run`` in a subprocess (for SIGTERM / kill -9 tests).

Brokers and subscribers come from tests.helpers.mqtt_broker (``mosquitto``, ``mqtt_subscriber``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Clip:
    path: Path
    frames: int
    width: int
    height: int
    fps: float
    boxes: list[np.ndarray]  # per frame [N, 4] xyxy
    track_ids: list[np.ndarray]  # per frame [N]
    true_count: int


def make_clip(
    path: Path,
    frames: int = 60,
    width: int = 320,
    height: int = 192,
    fps: float = 10.0,
    objects: int = 4,
    seed: int = 0,
) -> Clip:
    """A real mp4 with ``objects`` discs entering/leaving at different times; ground truth returned alongside."""
    rng = np.random.default_rng(seed)
    background = rng.normal(90, 12, (height, width, 3)).clip(0, 255).astype(np.uint8)
    background[..., 0] = np.clip(background[..., 0].astype(int) + 60, 0, 255)  # bluish
    tracks = []
    for track_id in range(1, objects + 1):
        radius = int(rng.integers(10, 20))
        start = int(rng.integers(0, max(1, frames // 2)))
        length = int(rng.integers(frames // 3, frames))
        x0, y0 = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
        vx, vy = rng.uniform(-2.5, 2.5), rng.uniform(-1.5, 1.5)
        tracks.append((track_id, radius, start, min(frames, start + length), x0, y0, vx, vy))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write mp4v video here")
    all_boxes, all_ids = [], []
    seen = set()
    for f in range(frames):
        image = background.copy()
        boxes, ids = [], []
        for track_id, radius, start, end, x0, y0, vx, vy in tracks:
            if not start <= f < end:
                continue
            t = f - start
            x = float(np.clip(x0 + vx * t, radius, width - radius))
            y = float(np.clip(y0 + vy * t, radius, height - radius))
            cv2.circle(image, (int(x), int(y)), radius, (40, 110, 230), -1, cv2.LINE_AA)
            boxes.append([x - radius, y - radius, x + radius, y + radius])
            ids.append(track_id)
            seen.add(track_id)
        writer.write(image)
        all_boxes.append(np.array(boxes, np.float32).reshape(-1, 4))
        all_ids.append(np.array(ids, np.int64))
    writer.release()
    return Clip(path, frames, width, height, fps, all_boxes, all_ids, len(seen))


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    return make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4")


@pytest.fixture(scope="session")
def agent_bundle(tiny_bundle: Any) -> Any:
    """The signed tiny bundle (``.path``, ``.public_key``) from tests.helpers.bundles."""
    return tiny_bundle


def agent_config(
    tmp: Path, bundle: Any, source: str | int, port: int, device_id: str = "test-dev", **overrides: Any
) -> dict[str, Any]:
    """A complete, valid agent configuration as a dict (write it with `write_config`)."""
    cfg: dict[str, Any] = {
        "device_id": device_id,
        "cameras": [
            {
                "id": "cam0",
                "source": str(source) if isinstance(source, Path) else source,
                "read_mode": "every_frame",
                "reconnect_initial_s": 0.2,
                "reconnect_max_s": 1.0,
                "open_timeout_s": 2.0,
                "read_timeout_s": 1.5,
            }
        ],
        "detector": {
            "bundle": str(bundle.path),
            "trusted_keys": [str(bundle.public_key)],
            "backends": ["tensorrt", "onnxruntime"],
            "threads": 1,
        },
        "mqtt": {
            "host": "127.0.0.1",
            "port": port,
            "keepalive_s": 5,
            "reconnect_min_delay_s": 0.2,
            "reconnect_max_delay_s": 1.0,
            "stats_interval_s": 1.0,
            "discovery": {"enabled": True},
        },
        "outbox_path": str(tmp / "outbox.sqlite3"),
        "state_dir": str(tmp / "state"),
        "console_interval_s": 1.0,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


class AgentProcess:
    """`python -m starfish_cli agent run --config …` as a child process, output captured to a file."""

    def __init__(self, config_path: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in wait()/kill()
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "starfish_cli", "agent", "run", "--config", str(config_path), "--no-console"],
            cwd=REPO_ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 15.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.wait(10.0)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def alive(self) -> bool:
        return self.proc.poll() is None

"""Over-the-air update helpers for tests that run a real agent against a real Mosquitto and HTTP store.

* ``release_key`` (module): an announcement signing key pair ``(private, public)``; ``looping_clip`` (module): a
  40-frame clip for ``loop: true`` cameras.
* ``start_agent(tmp_path, bundle, clip, broker, release_key, bundle_keys, log, **updates)``: an `AgentProcess` on
  a looping clip with an ``updates:`` block (fast retries, lenient latency and fps checks for shared cores).
* ``publish``, ``retained``: a one-shot MQTT publish / read of a retained message; ``events`` and ``counts``: the
  ``…/model/result`` and ``…/counts`` payloads a recorder got; ``assert_contiguous``: no seq (and frame) gap;
  ``current``: where the device's ``models/current`` link points.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.helpers.agent import AgentProcess, Clip, agent_config, make_clip, write_config
from tests.helpers.mqtt_broker import wait_until

DEVICE = "ota-dev"
FLEET = "survey-a"


@pytest.fixture(scope="module")
def release_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from edge_agent.bundle import generate_keypair

    root = tmp_path_factory.mktemp("release-key")
    generate_keypair(root / "release.pem", root / "release.pub")
    return root / "release.pem", root / "release.pub"


@pytest.fixture(scope="module")
def looping_clip(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    return make_clip(tmp_path_factory.mktemp("ota-clip") / "clip.mp4", frames=40)


def start_agent(
    tmp_path: Path, bundle: Any, clip: Any, broker: Any, release_key: Any, bundle_keys: Any, log: str, **updates: Any
) -> AgentProcess:
    """The agent as device ``DEVICE`` of fleet ``FLEET``, running ``bundle`` (``.path``, ``.public_key``)."""
    cfg = agent_config(tmp_path, bundle, clip.path, broker.port, device_id=DEVICE)
    cfg["cameras"][0].update(loop=True, realtime=False)
    cfg["detector"]["trusted_keys"] = [str(bundle.public_key), str(bundle_keys.public)]
    cfg["detector"]["backends"] = ["onnxruntime"]
    cfg["mqtt"]["fleet"] = FLEET
    cfg["updates"] = {
        "models_dir": str(tmp_path / "models"),
        "release_keys": [str(release_key[1])],
        "retries": 1,
        "backoff_initial_s": 0.1,
        "backoff_max_s": 0.2,
        "stall_timeout_s": 5,
        "check_runs": 2,
        # Two shared CPU cores: the candidate is timed while the running model keeps them busy.
        "latency_budget_factor": 50,
        "probation_frames": 15,
        "probation_s": 1.0,
        "probation_max_errors": 2,
        # Shared cores make fps swing: only the fps test judges it at the default 50 %.
        "probation_max_fps_drop": 0.95,
        **updates,
    }
    return AgentProcess(write_config(tmp_path / "agent.yaml", cfg), tmp_path / log)


def publish(broker: Any, topic: str, payload: bytes, retain: bool = False) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ota-release")
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def events(sub: Any) -> list[dict[str, Any]]:
    return [m.json() for m in sub.on("/model/result")]


def counts(sub: Any) -> list[dict[str, Any]]:
    return [m.json() for m in sub.on("/counts")]


def retained(broker: Any, topic: str, timeout: float = 5.0) -> dict[str, Any]:
    """What a fresh subscriber gets for ``topic`` (the retained message)."""
    got: list[bytes] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ota-retained")
    client.on_message = lambda _c, _u, msg: got.append(bytes(msg.payload))
    client.on_connect = lambda c, *_a: c.subscribe(topic, qos=1)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        assert wait_until(lambda: bool(got), timeout), f"no retained message on {topic}"
    finally:
        client.disconnect()
        client.loop_stop()
    return json.loads(got[-1])


def assert_contiguous(docs: list[dict[str, Any]], frames: bool = True) -> None:
    seqs = sorted({d["seq"] for d in docs})
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), "gap in counts seq"
    if frames:  # one agent session: frame numbers restart with the process
        numbers = sorted({d["frame"] for d in docs})
        assert numbers == list(range(numbers[0], numbers[-1] + 1)), "a frame went uncounted"


def current(tmp_path: Path) -> str:
    return os.readlink(tmp_path / "models" / "current")

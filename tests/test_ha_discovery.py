"""Home Assistant discovery as Home Assistant would read it from a real Mosquitto: the retained configs, the retained
state topics they point at, availability through the Last Will, state classes, stable ids.

A Home Assistant core cannot run in the test suite (see `scripts/ha_check.sh` for the real one); `_ha_view` applies
the few rules of its MQTT sensor that matter here (templates rendered by jinja2, as Home Assistant does).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2  # a dev dependency: templates are rendered as Home Assistant does
import pytest

from edge_agent.mqtt.config import MqttConfig
from edge_agent.mqtt.discovery import discovery_messages
from edge_agent.mqtt.publisher import AgentPublisher
from edge_agent.mqtt.topics import Topics
from edge_agent.outbox import Outbox
from tests.helpers.mqtt_broker import MosquittoBroker, Subscriber, free_port, wait_until

pytestmark = pytest.mark.mqtt

REPO = Path(__file__).resolve().parents[1]
MODEL = {"name": "cots", "version": 3, "variant": "int8", "backend": "onnxruntime"}


def _cfg(port: int) -> MqttConfig:
    return MqttConfig.model_validate(
        {
            "host": "127.0.0.1",
            "port": port,
            "reconnect_min_delay_s": 0.1,
            "reconnect_max_delay_s": 0.5,
            "keepalive_s": 5,
        }
    )


def _render(template: str, value: str) -> str:
    try:
        value_json: Any = json.loads(value)
    except ValueError:
        value_json = None
    return jinja2.Environment().from_string(template).render(value=value, value_json=value_json).strip()


def _ha_view(config: dict[str, Any], retained: dict[str, str]) -> tuple[bool, str | None]:
    """(available, state) of one discovered sensor, from the broker's retained messages, the way Home Assistant's
    MQTT sensor decides them: every availability entry (mode `all`) must render to its `payload_available`; a payload
    matching neither word leaves the entity as it was (here: as unknown, so not available)."""
    verdicts = []
    for entry in config["availability"]:
        payload = retained.get(entry["topic"])
        if payload is None:
            verdicts.append(False)
            continue
        word = _render(entry["value_template"], payload) if "value_template" in entry else payload
        verdicts.append(word == entry.get("payload_available", "online"))
    mode = config.get("availability_mode", "latest")
    available = all(verdicts) if mode == "all" else verdicts[-1]
    raw = retained.get(config["state_topic"])
    if raw is None:
        return available, None
    return available, _render(config["value_template"], raw) if "value_template" in config else raw


def _retained(broker: MosquittoBroker, subscriber: Callable[..., Subscriber], name: str, configs: int) -> Any:
    """A fresh client's view (Home Assistant after its restart): the latest payload of each topic (retained ones,
    and any published while it was subscribing, which the broker delivers as live)."""
    sub = subscriber(broker, ["homeassistant/#", "starfish/#"], client_id=name)
    assert wait_until(lambda: len(sub.on("/config")) >= configs, 5), sub.topics()
    wait_until(lambda: False, 0.3)  # the rest of the retained set arrives right behind the configs
    state = {m.topic: m.payload.decode() for m in sub.messages}
    configs_by_id = {}
    for topic, payload in state.items():
        if topic.endswith("/config"):
            doc = json.loads(payload)
            configs_by_id[doc["unique_id"]] = doc
    return state, configs_by_id, sub


@pytest.fixture
def outboxes(tmp_path: Path) -> Iterator[Callable[[], Outbox]]:
    opened: list[Outbox] = []

    def make() -> Outbox:
        opened.append(Outbox(tmp_path / "outbox.db"))
        return opened[-1]

    yield make
    for outbox in opened:
        outbox.close()


def test_unique_ids_are_stable() -> None:
    """Pinned: Home Assistant keys its entity registry on these, a changed one shows up as a `_2` duplicate."""
    configs = [json.loads(p) for _, p in discovery_messages(Topics("starfish", "boat.1"), ["cam1", "cam0"], "1.0")]
    assert [c["unique_id"] for c in configs] == [
        "starfish_boat.1_cam0_count",
        "starfish_boat.1_cam0_unique_count",
        "starfish_boat.1_cam0_status",
        "starfish_boat.1_cam1_count",
        "starfish_boat.1_cam1_unique_count",
        "starfish_boat.1_cam1_status",
        "starfish_boat.1_outbox_depth",
        "starfish_boat.1_model",
    ]
    again = [json.loads(p) for _, p in discovery_messages(Topics("starfish", "boat.1"), ["cam0", "cam1"], "2.0")]
    assert [c["unique_id"] for c in again] == [c["unique_id"] for c in configs]  # not tied to version or order
    assert {c["object_id"] for c in configs} == {c["unique_id"].replace(".", "_") for c in configs}


def test_unique_sensor_is_live_and_retained_while_replays_go_back_in_time(
    mqtt_subscriber: Callable[..., Subscriber], outboxes: Callable[[], Outbox], tmp_path: Path
) -> None:
    """Session 1 counts to unique 9 while the broker is down (all of it waits in the outbox); session 2 starts at 0
    with the broker up. The replayed session-1 counts carry unique 9, later than session 2's live 0..2 on the wire:
    a sensor on `…/counts` would jump 2 → 9 → 2. The discovered sensor reads the retained live topic instead."""
    port = free_port()
    broker = MosquittoBroker(tmp_path / "broker", port=port)
    try:
        outbox = outboxes()
        first = AgentPublisher(_cfg(port), "dev1", outbox, "9.9.9")
        first.set_camera_status("cam0", "online")
        first.start()
        for i in range(10):
            first.publish_counts(
                "cam0", {"ts": datetime.now(timezone.utc), "frame": i, "count": 1, "unique_count": i, "model": MODEL}
            )
            first.publish_count_value("cam0", 1, i)
        first.stop(timeout=0.5)
        assert outbox.depth == 10

        broker.start()
        watcher = mqtt_subscriber(broker, ["starfish/dev1/#"], client_id="watcher")
        second = AgentPublisher(_cfg(port), "dev1", outbox, "9.9.9")
        second.set_model_info(MODEL)
        second.set_camera_status("cam0", "online")
        second.start()
        assert wait_until(lambda: second._ready, 10)  # noqa: SLF001 - live values are only sent once ready
        for i in range(3):
            second.publish_counts(
                "cam0", {"ts": datetime.now(timezone.utc), "frame": i, "count": 2, "unique_count": i, "model": MODEL}
            )
            second.publish_count_value("cam0", 2, i)
        assert wait_until(lambda: len(watcher.on("cam0/counts")) == 13 and outbox.depth == 0, 10)
        assert wait_until(lambda: watcher.on("cam0/unique") and watcher.on("cam0/unique")[-1].payload == b"2", 5)

        replayed = [m.json() for m in watcher.on("cam0/counts") if m.json()["historical"]]
        assert max(d["unique_count"] for d in replayed) == 9  # the hazard is really on the wire
        # Only session 2's live values ever reached the unique topic, each once, in order.
        assert [m.payload for m in watcher.on("cam0/unique")] == [b"0", b"1", b"2"]

        state, configs, _ = _retained(broker, mqtt_subscriber, "ha-late", 5)
        unique = configs["starfish_dev1_cam0_unique_count"]
        count = configs["starfish_dev1_cam0_count"]
        assert unique["state_topic"] == "starfish/dev1/cam0/unique"
        assert _ha_view(unique, state) == (True, "2")
        assert _ha_view(count, state) == (True, "2")
        # The unique count fell (9 in session 1's frames, 0 at session 2's start): no `total_increasing` for it.
        assert unique["state_class"] == count["state_class"] == "measurement"
        assert all(c.get("state_class") != "total_increasing" for c in configs.values())
        second.stop(timeout=2)
    finally:
        broker.kill()


def test_availability_follows_last_will_stop_and_disabled_camera(
    mosquitto: MosquittoBroker, mqtt_subscriber: Callable[..., Subscriber], outboxes: Callable[[], Outbox]
) -> None:
    outbox = outboxes()
    pub = AgentPublisher(_cfg(mosquitto.port), "dev1", outbox, "9.9.9")
    pub.set_model_info(MODEL)
    pub.set_camera_status("cam0", "online")
    pub.set_camera_status("cam1", "disabled")
    pub.start()
    assert wait_until(lambda: pub._ready, 10)  # noqa: SLF001
    pub.publish_count_value("cam0", 3, 7)
    pub.publish_count_value("cam1", 1, 1)
    state, configs, _ = _retained(mosquitto, mqtt_subscriber, "ha-1", 8)
    assert set(configs) == {
        f"starfish_dev1_{name}"
        for name in (
            "cam0_count",
            "cam0_unique_count",
            "cam0_status",
            "cam1_count",
            "cam1_unique_count",
            "cam1_status",
            "outbox_depth",
            "model",
        )
    }
    assert _ha_view(configs["starfish_dev1_cam0_count"], state) == (True, "3")
    assert _ha_view(configs["starfish_dev1_cam0_unique_count"], state) == (True, "7")
    # A disabled camera's numbers are not current: unavailable, not stuck on "available" with an old value.
    assert _ha_view(configs["starfish_dev1_cam1_count"], state)[0] is False
    assert _ha_view(configs["starfish_dev1_cam1_status"], state) == (True, "disabled")
    assert _ha_view(configs["starfish_dev1_model"], state) == (True, "cots v3 (int8)")
    for doc in configs.values():
        assert doc["availability"][0]["topic"] == "starfish/dev1/status"  # the Last Will topic
        assert doc["device"]["identifiers"] == ["starfish_dev1"]

    pub.stop(timeout=3)  # a clean stop says `stopped`: unavailable too
    state, configs, _ = _retained(mosquitto, mqtt_subscriber, "ha-2", 8)
    assert state["starfish/dev1/status"] == "stopped"
    assert not any(_ha_view(c, state)[0] for c in configs.values())


def test_last_will_makes_every_entity_unavailable_after_kill_9(
    mosquitto: MosquittoBroker, mqtt_subscriber: Callable[..., Subscriber], tmp_path: Path
) -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_agent.mqtt.synthetic",
            "--port",
            str(mosquitto.port),
            "--device-id",
            "child",
            "--outbox",
            str(tmp_path / "child.db"),
            "--rate",
            "20",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        sub = mqtt_subscriber(mosquitto, ["starfish/child/#"], client_id="watch-child")
        assert wait_until(lambda: len(sub.on("cam0/unique")) >= 3, 15)
        state, configs, _ = _retained(mosquitto, mqtt_subscriber, "ha-child-1", 5)
        unique = configs["starfish_child_cam0_unique_count"]
        available, value = _ha_view(unique, state)
        assert available and value is not None and int(value) >= 2
        # The synthetic count cycles 0,1,2,3 every frame: each frame's value is new, so each is published, and
        # the live values on the wire never repeat back to back (the retained copy that greets a new subscriber may
        # equal the next live one, so it is left out).
        values = [m.payload for m in sub.on("cam0/count") if not m.retain]
        assert all(a != b for a, b in zip(values, values[1:], strict=False))
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        assert wait_until(lambda: sub.on("child/status") and sub.on("child/status")[-1].payload == b"offline", 10)
        state, configs, _ = _retained(mosquitto, mqtt_subscriber, "ha-child-2", 5)
        # The camera's retained `online` outlives the kill; the device's Will still makes everything unavailable.
        assert state["starfish/child/cam0/status"] == "online"
        assert not any(_ha_view(c, state)[0] for c in configs.values())
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)

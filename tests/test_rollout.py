"""Rollout from the publisher's side against a real Mosquitto: `starfish rollout status` and canary waves.

The devices are real MQTT clients that act as the agent's update manager does on the wire: they verify the signed
announcement they receive, then publish their states retained on `…/model/update` and as events on
`…/model/result` (committed, or failed / refused), and `…/model` once they run the new version.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

import starfish_cli
from edge_agent.bundle import generate_keypair, load_public_key
from edge_agent.bundle.manifest import parse_manifest
from edge_agent.update.announcement import parse_announcement
from tests.helpers.mqtt_broker import MosquittoBroker, wait_until

pytestmark = pytest.mark.mqtt

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo" / "bundle"
DEMO_KEY = ROOT / "models" / "demo" / "demo_key.pub"


class FakeDevice:
    """One device on the wire: ``behaviour`` is "ok" (commits), "fail" (rolls back in probation), "refuse"
    (refuses the announcement), "silent" (says nothing)."""

    def __init__(self, broker: MosquittoBroker, device_id: str, behaviour: str, release_pub: Path) -> None:
        self.device_id, self.behaviour = device_id, behaviour
        self.keys = [load_public_key(release_pub)]
        self.received: list[tuple[str, int]] = []  # (topic, version)
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fake-{device_id}")
        self.client.on_connect = lambda c, *_a: c.subscribe(
            [(f"starfish/{device_id}/model/set", 1), ("starfish/fleet/+/model", 1)]
        )
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(10)
        self._report("model", {"schema_version": 1, "name": "starfish-cots", "version": 5}, retain=True)
        self._report("model/update", {"schema_version": 1, "state": "idle"}, retain=True)

    def _report(self, leaf: str, payload: dict, retain: bool = False) -> None:
        self.client.publish(f"starfish/{self.device_id}/{leaf}", json.dumps(payload), qos=1, retain=retain)

    def _on_message(self, _c, _u, message) -> None:  # type: ignore[no-untyped-def]
        ann = parse_announcement(bytes(message.payload), self.keys).announcement
        self.received.append((message.topic, ann.version))
        if not ann.targets(self.device_id) or self.behaviour == "silent":
            return
        if self.behaviour == "refuse":
            self._report("model/result", {"schema_version": 1, "event": "refused", "error_code": "expired"})
            return
        base = {"schema_version": 1, "name": ann.name, "version": ann.version, "size": ann.size}
        states = ["downloading", "verifying", "staging", "checking", "swapping", "probation"]
        states.append("committed" if self.behaviour == "ok" else "rolled_back")
        for state in states:
            error = {"error_code": "probation_failed", "error": "fps dropped"} if state == "rolled_back" else {}
            payload = {**base, "state": state, "progress": ann.size, **error}
            self._report("model/update", payload, retain=True)
            self._report("model/result", {**payload, "event": state})
        if self.behaviour == "ok":
            self._report("model", {"schema_version": 1, "name": ann.name, "version": ann.version}, retain=True)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture()
def release_key(tmp_path: Path) -> tuple[Path, Path]:
    generate_keypair(tmp_path / "release.pem", tmp_path / "release.pub")
    return tmp_path / "release.pem", tmp_path / "release.pub"


@pytest.fixture()
def devices(mosquitto, release_key):
    made: list[FakeDevice] = []

    def make(device_id: str, behaviour: str) -> FakeDevice:
        made.append(FakeDevice(mosquitto, device_id, behaviour, release_key[1]))
        return made[-1]

    yield make
    for device in made:
        device.stop()


def _release(tmp_path: Path, key: Path, broker: MosquittoBroker, *extra: str) -> int:
    argv = ["release", str(DEMO), "--store", str(tmp_path / "store"), "--url-base", "http://127.0.0.1:1/"]
    argv += ["--key", str(key), "--bundle-key", str(DEMO_KEY), "--broker", f"127.0.0.1:{broker.port}", *extra]
    with pytest.raises(SystemExit) as exit_info:
        starfish_cli.main(argv)
    return int(exit_info.value.code or 0)


def _fleet_retained(broker: MosquittoBroker, mqtt_subscriber) -> list:  # type: ignore[no-untyped-def]
    sub = mqtt_subscriber(broker, ["starfish/fleet/+/model"], client_id="fleet-check")
    wait_until(lambda: bool(sub.on("/model")), 1.5)
    return sub.on("/model")


def test_canaries_commit_then_the_fleet_topic_is_published(tmp_path, release_key, mosquitto, devices, capsys):
    dev1, dev2, rest = devices("dev1", "ok"), devices("dev2", "ok"), devices("dev3", "ok")
    code = _release(tmp_path, release_key[0], mosquitto, "--canary", "dev1,dev2", "--wave-timeout", "20")
    err = capsys.readouterr().err
    assert code == 0, err
    assert "canary dev1: ok (committed)" in err and "canary dev2: ok (committed)" in err
    # canaries heard it on their own topic first; the rest of the fleet only from the fleet topic, after them
    assert dev1.received[0][0] == "starfish/dev1/model/set" and dev2.received[0][0] == "starfish/dev2/model/set"
    assert wait_until(lambda: bool(rest.received), 10)
    assert [topic for topic, _ in rest.received] == ["starfish/fleet/default/model"]


def test_a_failed_canary_stops_the_wave_before_the_fleet_hears_of_it(
    tmp_path, release_key, mosquitto, devices, mqtt_subscriber, capsys
):
    devices("dev1", "ok")
    devices("dev2", "fail")
    devices("dev3", "refuse")
    devices("dev4", "ok")
    bystander = devices("dev9", "ok")
    code = _release(
        tmp_path, release_key[0], mosquitto, "--canary", "dev1,dev2", "--canary", "dev3,dev4", "--wave-timeout", "20"
    )
    err = capsys.readouterr().err
    assert code == 1, err
    assert "canary dev2: failed (rolled_back: probation_failed)" in err
    assert "canary dev3: failed (refused: expired)" in err
    assert "rollout stopped: 50 % of the canaries failed (more than 20 %)" in err
    assert _fleet_retained(mosquitto, mqtt_subscriber) == []
    assert bystander.received == []


def test_a_silent_canary_counts_as_failed_after_the_timeout_and_the_share_decides(
    tmp_path, release_key, mosquitto, devices, capsys
):
    for name in ("dev1", "dev2", "dev3", "dev4"):
        devices(name, "ok")
    devices("dev5", "silent")
    code = _release(
        tmp_path,
        release_key[0],
        mosquitto,
        "--canary",
        "dev1,dev2,dev3,dev4,dev5",
        "--max-failure-share",
        "0.2",
        "--wave-timeout",
        "3",
    )
    err = capsys.readouterr().err
    assert code == 0, err  # 1 of 5 is 20 %: not more than the threshold
    assert "canary dev5: failed (no outcome within 3 s" in err


def test_rollout_status_shows_each_device_from_the_retained_reports(tmp_path, release_key, mosquitto, devices, capsys):
    devices("dev1", "ok")
    devices("dev2", "fail")
    devices("dev3", "silent")
    assert _release(tmp_path, release_key[0], mosquitto, "--canary", "dev1,dev2", "--wave-timeout", "20") == 1
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        starfish_cli.main(["rollout", "status", "--broker", f"127.0.0.1:{mosquitto.port}", "--wait", "0.5", "--json"])
    assert exit_info.value.code == 0
    status = json.loads(capsys.readouterr().out)
    assert set(status) == {"dev1", "dev2", "dev3"}
    released = parse_manifest((DEMO / "manifest.json").read_bytes()).version  # the demo bundle is what is released
    assert status["dev1"]["update"]["state"] == "committed" and status["dev1"]["running"]["version"] == released
    assert status["dev2"]["update"]["state"] == "rolled_back" and status["dev2"]["running"]["version"] == 5
    assert status["dev2"]["update"]["error_code"] == "probation_failed"
    assert status["dev3"]["update"] == {"schema_version": 1, "state": "idle"}
    with pytest.raises(SystemExit) as exit_info:
        starfish_cli.main(["rollout", "status", "--broker", f"127.0.0.1:{mosquitto.port}", "--wait", "0.2"])
    table = capsys.readouterr().out
    assert exit_info.value.code == 0
    row = next(line for line in table.splitlines() if "dev2" in line)
    assert "rolled_back" in row and "probation_failed" in row and "starfish-cots v5" in row


def test_rollout_status_with_an_unreachable_broker_is_one_line(capsys) -> None:
    from tests.helpers.mqtt_broker import free_port

    port = free_port()
    with pytest.raises(SystemExit) as exit_info:
        starfish_cli.main(["rollout", "status", "--broker", f"127.0.0.1:{port}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"cannot reach the MQTT broker 127.0.0.1:{port}" in err.splitlines()[-1]

"""Check the agent's Home Assistant discovery against a real Home Assistant core (run by `scripts/ha_check.sh`).

Everything on loopback: a Mosquitto on a free port, the synthetic publisher (the agent's real `AgentPublisher` and
outbox, `python -m edge_agent.mqtt.synthetic`), and `hass` from its own virtual environment with a config entry for
that broker written before it starts (Home Assistant has configured MQTT brokers only through config entries since
2023.4). Home Assistant's own `mqtt_statestream` integration publishes every sensor's state back to the broker under
`hass_states/`, so the check reads what Home Assistant shows without its HTTP API or an access token.

Checks, in order (each prints a line; exit 0 only if all pass):
1. the entities appear with the expected entity ids;
2. their states follow the live retained values (`…/cam0/count`, `…/cam0/unique`);
3. Home Assistant restarted: the same entities come back (no `_2` duplicates) with current values;
4. the publisher killed with kill -9: the Last Will makes them `unavailable`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[1]
DEVICE = "hacheck"
ENTITIES = ("cam0_count", "cam0_unique_count", "cam0_status", "outbox_depth", "model")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


class Watcher:
    """Latest payload of every topic under `hass_states/` and `starfish/`."""

    def __init__(self, port: int) -> None:
        self.latest: dict[str, str] = {}
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ha-check-{uuid.uuid4().hex[:6]}")
        self.client.on_connect = lambda c, *_: c.subscribe([("hass_states/#", 1), ("starfish/#", 1)])
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.latest[msg.topic] = msg.payload.decode("utf-8", "replace")

    def get(self, topic: str) -> str | None:
        with self._lock:
            return self.latest.get(topic)

    def ha_state(self, entity: str) -> str | None:
        return self.get(f"hass_states/sensor/starfish_{DEVICE}_{entity}/state")

    def ha_entities(self) -> set[str]:
        with self._lock:
            return {t.split("/")[2] for t in self.latest if t.startswith("hass_states/sensor/")}


def _write_ha_config(config_dir: Path, port: int) -> None:
    (config_dir / ".storage").mkdir(parents=True, exist_ok=True)
    (config_dir / "configuration.yaml").write_text(
        "homeassistant:\n"
        "  name: ha-check\n  latitude: 0\n  longitude: 0\n  elevation: 0\n  unit_system: metric\n"
        "  time_zone: UTC\n"
        "logger:\n  default: warning\n  logs:\n    homeassistant.components.mqtt: info\n"
        # Every sensor's state back to the broker: what the entity shows, readable without HTTP or a token.
        "mqtt_statestream:\n  base_topic: hass_states\n  publish_attributes: false\n"
        "  include:\n    domains: [sensor]\n"
    )
    entry = {
        "entry_id": uuid.uuid4().hex,
        "version": 1,
        "minor_version": 1,
        "domain": "mqtt",
        "title": "127.0.0.1",
        "data": {"broker": "127.0.0.1", "port": port, "discovery": True, "discovery_prefix": "homeassistant"},
        "options": {},
        "pref_disable_new_entities": False,
        "pref_disable_polling": False,
        "source": "user",
        "unique_id": None,
        "disabled_by": None,
    }
    doc = {"version": 1, "minor_version": 1, "key": "core.config_entries", "data": {"entries": [entry]}}
    (config_dir / ".storage" / "core.config_entries").write_text(json.dumps(doc))


def _start_hass(hass: str, config_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    # --skip-pip: the requirements (paho-mqtt 1.6.1) are in its venv already; nothing is fetched at run time.
    return subprocess.Popen(
        [hass, "-c", str(config_dir), "--skip-pip", "--log-file", str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )


def _stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hass", required=True, help="the `hass` executable of the Home Assistant venv")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds allowed for each step")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, HA config)")
    args = parser.parse_args(argv)

    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(mosquitto).exists():
        print("error: mosquitto is not installed (apt-get install mosquitto)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="ha-check-"))
    port = _free_port()
    (work / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    broker = subprocess.Popen([mosquitto, "-c", str(work / "mosquitto.conf")], stderr=subprocess.DEVNULL)
    agent: subprocess.Popen[bytes] | None = None
    hass: subprocess.Popen[bytes] | None = None
    failures: list[str] = []

    def check(name: str, ok: bool, detail: str = "") -> bool:
        print(f"{'PASS' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
        if not ok:
            failures.append(name)
        return ok

    try:
        time.sleep(0.5)
        watcher = Watcher(port)
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edge_agent.mqtt.synthetic",
                "--port",
                str(port),
                "--device-id",
                DEVICE,
                "--outbox",
                str(work / "outbox.db"),
                "--rate",
                "2",
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
        )
        config_dir = work / "ha"
        _write_ha_config(config_dir, port)
        started = time.monotonic()
        hass = _start_hass(args.hass, config_dir, work / "ha.log")
        expected = {f"starfish_{DEVICE}_{e}" for e in ENTITIES}
        appeared = _wait(lambda: expected <= watcher.ha_entities(), args.timeout)
        check(
            "entities appear",
            appeared,
            f"{sorted(watcher.ha_entities())} after {time.monotonic() - started:.0f} s",
        )
        if not appeared:
            return 1

        def follows(entity: str, topic: str) -> bool:
            live = watcher.get(f"starfish/{DEVICE}/cam0/{topic}")
            return live is not None and watcher.ha_state(entity) == live

        # The synthetic publisher changes both every 2 s at most (count every frame, unique every 4th): wait for a
        # moment where Home Assistant shows exactly what the broker holds.
        for entity, topic in (("cam0_count", "count"), ("cam0_unique_count", "unique")):
            ok = _wait(lambda e=entity, t=topic: follows(e, t), 30)
            check(
                f"{entity} shows the live value",
                ok,
                f"HA {watcher.ha_state(entity)!r}, broker {watcher.get(f'starfish/{DEVICE}/cam0/{topic}')!r}",
            )
        first_unique = int(watcher.ha_state("cam0_unique_count") or 0)
        check(
            "cam0_unique_count rises", _wait(lambda: int(watcher.ha_state("cam0_unique_count") or 0) > first_unique, 30)
        )
        check("model", watcher.ha_state("model") == "synthetic v1 (none)", repr(watcher.ha_state("model")))
        check("cam0_status", watcher.ha_state("cam0_status") == "online", repr(watcher.ha_state("cam0_status")))

        # Home Assistant restart: same entities (no `_2` from a changed unique_id), current values again.
        _stop(hass)
        watcher.latest = {k: v for k, v in watcher.latest.items() if not k.startswith("hass_states/")}
        hass = _start_hass(args.hass, config_dir, work / "ha2.log")
        back = _wait(lambda: expected <= watcher.ha_entities() and follows("cam0_unique_count", "unique"), args.timeout)
        duplicates = sorted(e for e in watcher.ha_entities() if e.endswith("_2"))
        check("after a Home Assistant restart", back and not duplicates, f"duplicates: {duplicates}")

        # kill -9: the broker publishes the Last Will (`offline`) and every entity becomes unavailable.
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        gone = _wait(lambda: all(watcher.ha_state(e) == "unavailable" for e in ENTITIES), 60)
        check("unavailable after kill -9 (Last Will)", gone, str({e: watcher.ha_state(e) for e in ENTITIES}))
    finally:
        _stop(agent, signal.SIGKILL)
        _stop(hass)
        _stop(broker)
        if args.keep or failures:
            print(f"work directory (logs, HA config): {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("ok" if not failures else f"failed: {', '.join(failures)}")
    return 0 if not failures else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())

"""Does the broker keep a persistent session's *shared* subscription across its own restart?

Mosquitto on 127.0.0.1 (a free port, persistence in a temporary directory) and one MQTT 5 client with a persistent
session (`clean_start=False`, session expiry 1 h), subscribed once at QoS 1, then offline. The broker is restarted
(clean stop: the persistence file is written), ten QoS 1 messages are published, and the client reconnects
*without* subscribing again: what arrives is what the restored session kept. Run once with a plain filter and once
with a shared one (`$share/g/…`):

    .venv/bin/python scripts/mosquitto_shared_restart.py

Seen with Mosquitto 2.0.11 (Debian 12): plain 10 of 10, shared 0 of 10 — the shared subscription is not restored,
so messages published between a broker restart and the members' next SUBSCRIBE have no subscriber. Messages that
were already queued for the session before the restart do survive it. This is why `starfish shore run --workers N`
(N > 1) does not claim no loss across a broker restart (shore/README.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

MESSAGES = 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Broker:
    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {workdir}/\nmax_queued_messages 0\n" + ("user root\n" if os.geteuid() == 0 else "")
            # Started as root, Mosquitto drops to user `mosquitto`, which cannot write the persistence file here.
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(self.conf)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # a clean stop writes the persistence file
            self.proc.wait(10)


def _session(port: int, topic_filter: str | None, received: list[bytes]) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="probe", protocol=MQTTProtocolVersion.MQTTv5)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.on_message = lambda _c, _u, msg: received.append(msg.payload)
    subscribed = []
    if topic_filter is not None:
        client.on_connect = lambda c, *_: c.subscribe(topic_filter, qos=1)
        client.on_subscribe = lambda *_: subscribed.append(True)
    client.connect("127.0.0.1", port, clean_start=False, properties=props)
    client.loop_start()
    deadline = time.monotonic() + 5
    while topic_filter is not None and not subscribed and time.monotonic() < deadline:
        time.sleep(0.02)
    return client


def survives_restart(topic_filter: str) -> int:
    """How many of MESSAGES published after a broker restart reach the restored session of ``topic_filter``."""
    with tempfile.TemporaryDirectory(prefix="shared-restart-") as tmp:
        broker = _Broker(Path(tmp))
        broker.start()
        received: list[bytes] = []
        try:
            client = _session(broker.port, topic_filter, received)
            client.disconnect()
            client.loop_stop()
            broker.stop()
            broker.start()
            publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="publisher")
            publisher.connect("127.0.0.1", broker.port)
            publisher.loop_start()
            for i in range(MESSAGES):
                publisher.publish("probe/x", str(i), qos=1).wait_for_publish(5)
            publisher.disconnect()
            publisher.loop_stop()
            client = _session(broker.port, None, received)  # resume the session; no new SUBSCRIBE
            time.sleep(1.0)
            client.disconnect()
            client.loop_stop()
        finally:
            broker.stop()
        return len(received)


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    version = subprocess.run(
        [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-h"], capture_output=True, text=True
    ).stdout.splitlines()[0]
    print(version)
    for label, topic_filter in (("plain", "probe/#"), ("shared", "$share/g/probe/#")):
        print(f"{label:6} {topic_filter:18} {survives_restart(topic_filter)} of {MESSAGES} after a broker restart")
    return 0


if __name__ == "__main__":
    sys.exit(main())

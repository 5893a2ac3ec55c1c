"""Fault injection against a real Mosquitto: broker restarts, kill -9 of the publishing process, Last Will."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pytest

from edge_agent.mqtt.config import MqttConfig
from edge_agent.mqtt.publisher import AgentPublisher
from edge_agent.outbox import Outbox
from tests.helpers.mqtt_broker import MosquittoBroker, Subscriber, wait_until

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]


def test_broker_restarted_three_times_nothing_missing(
    mosquitto: MosquittoBroker, mqtt_subscriber: Callable[..., Subscriber], tmp_path: Path
) -> None:
    # A durable subscriber session (kept in the broker's persistence) receives what was published while it was
    # itself reconnecting; what the publisher could not deliver waits in its outbox.
    sub = mqtt_subscriber(mosquitto, ["starfish/dev1/+/counts"], durable=True, client_id="durable-sub")
    cfg = MqttConfig(port=mosquitto.port, reconnect_min_delay_s=0.1, reconnect_max_delay_s=0.5, keepalive_s=5)
    outbox = Outbox(tmp_path / "outbox.db")
    pub = AgentPublisher(cfg, "dev1", outbox, "test")
    pub.start()
    assert pub.wait_connected(10)
    published: list[int] = []
    stop = threading.Event()

    def produce() -> None:
        i = 0
        while not stop.is_set():
            published.append(
                pub.publish_counts(
                    "cam0", {"ts": datetime.now(timezone.utc), "frame": i, "count": i % 3, "unique_count": i}
                )
            )
            i += 1
            time.sleep(0.004)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        for _ in range(3):
            time.sleep(0.5)
            mosquitto.stop()
            time.sleep(0.5)  # outage: the agent keeps producing into the outbox
            assert not pub.connected
            mosquitto.start()
            assert wait_until(lambda: pub.connected, 10)
        time.sleep(0.3)
    finally:
        stop.set()
        producer.join()
    try:
        assert wait_until(lambda: pub.outbox_depth == 0, 20), pub.outbox_depth
        assert wait_until(lambda: set(published) <= set(sub.seqs()), 20)
        received = sub.seqs()
        unique = sorted(set(received))
        assert unique == list(range(published[0], published[-1] + 1))  # every seq from first to last
        assert pub.reconnects == 3
        historical = [m.json()["historical"] for m in sub.on("/counts")]
        assert any(historical) and not all(historical)  # outage backlog replayed, live traffic live
    finally:
        pub.stop(timeout=2)
        outbox.close()


class _Child:
    """The synthetic publisher (real AgentPublisher + Outbox) in its own process, so it can be killed -9."""

    def __init__(self, broker: MosquittoBroker, outbox: Path, *extra: str) -> None:
        cmd = [
            sys.executable,
            "-m",
            "edge_agent.mqtt.synthetic",
            "--port",
            str(broker.port),
            "--device-id",
            "child",
            "--outbox",
            str(outbox),
            *extra,
        ]
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        self.seqs: list[int] = []
        self.sessions: set[int] = set()
        self.done = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = line.split()
            if parts[:1] == ["seq"]:
                self.seqs.append(int(parts[1]))
                self.sessions.add(int(parts[3]))
            elif parts[:1] == ["done"]:
                self.done.set()

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._reader.join(5)

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code


def test_last_will_offline_on_kill_9(
    mosquitto: MosquittoBroker, mqtt_subscriber: Callable[..., Subscriber], tmp_path: Path
) -> None:
    sub = mqtt_subscriber(mosquitto, ["starfish/child/status"])
    child = _Child(mosquitto, tmp_path / "outbox.db", "--rate", "50")
    try:
        assert wait_until(lambda: [m.payload for m in sub.on("/status")] == [b"online"], 20)
        child.kill9()
        assert wait_until(lambda: len(sub.on("/status")) == 2, 10)
        assert sub.on("/status")[-1].payload == b"offline"
    finally:
        if child.proc.poll() is None:
            child.kill9()
    late = mqtt_subscriber(mosquitto, ["starfish/child/status"], client_id="late")
    assert wait_until(lambda: late.on("/status"), 5)
    assert late.on("/status")[-1].payload == b"offline" and late.on("/status")[-1].retain


def test_kill_9_and_restart_loses_nothing(
    mosquitto: MosquittoBroker, mqtt_subscriber: Callable[..., Subscriber], tmp_path: Path
) -> None:
    sub = mqtt_subscriber(
        mosquitto, ["starfish/child/+/counts", "starfish/child/status"], durable=True, client_id="durable-sub"
    )
    outbox = tmp_path / "outbox.db"
    first = _Child(mosquitto, outbox, "--rate", "400")
    try:
        assert wait_until(lambda: len(first.seqs) >= 100, 30)
        mosquitto.stop()  # outage: the next messages exist only in the outbox ...
        n = len(first.seqs)
        assert wait_until(lambda: len(first.seqs) >= n + 100, 30)
    finally:
        first.kill9()  # ... when the power goes
    committed = list(first.seqs)
    assert committed == list(range(committed[0], committed[-1] + 1))
    with Outbox(outbox) as box:
        assert box.depth >= 100  # the outage backlog is on disk

    mosquitto.start()
    second = _Child(mosquitto, outbox, "--rate", "0", "--count", "50")
    assert second.wait(60) == 0 and second.done.is_set()
    assert wait_until(lambda: set(committed + second.seqs) <= set(sub.seqs()), 10)

    received = sorted(set(sub.seqs()))
    assert received == list(range(received[0], received[-1] + 1))  # no gap anywhere
    assert set(committed) <= set(received)
    assert min(second.seqs) > max(committed)  # seq continues across the restart
    assert second.seqs == list(range(second.seqs[0], second.seqs[0] + 50))
    (s1,), (s2,) = first.sessions, second.sessions
    assert s2 == s1 + 1
    by_seq = {m.json()["seq"]: m.json() for m in sub.on("/counts")}
    assert all(by_seq[s]["session"] == s2 for s in second.seqs)
    assert all(by_seq[s]["historical"] for s in committed[-100:])  # replayed from the outbox
    assert [m.payload for m in sub.on("/status")][-1] == b"stopped"
    with Outbox(outbox) as box:
        assert box.depth == 0 and box.last_seq == max(second.seqs)


def test_sigterm_flushes_and_publishes_stopped(
    mosquitto: MosquittoBroker, mqtt_subscriber: Callable[..., Subscriber], tmp_path: Path
) -> None:
    sub = mqtt_subscriber(mosquitto, ["starfish/child/status", "starfish/child/+/counts"])
    child = _Child(mosquitto, tmp_path / "outbox.db", "--rate", "200")
    assert wait_until(lambda: len(child.seqs) >= 50, 30)
    t0 = time.monotonic()
    child.proc.send_signal(signal.SIGTERM)
    assert child.wait(10) == 0 and child.done.is_set()
    assert time.monotonic() - t0 < 5
    assert wait_until(lambda: [m.payload for m in sub.on("/status")][-1:] == [b"stopped"], 5)
    assert set(child.seqs) <= set(sub.seqs())  # everything committed before the stop was flushed
    with Outbox(tmp_path / "outbox.db") as box:
        assert box.depth == 0

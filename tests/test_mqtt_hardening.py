"""Issue 11 (hardening), MQTT and outbox side, each provoked for real: a Mosquitto ACL that refuses publishes (and is
reloaded with SIGHUP), a real oversized inbound publish, two clients with one device id, a Home Assistant status
flood, a full outbox database (SQLite's page limit), a CONNACK handler that raises."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from edge_agent.mqtt.config import MqttConfig
from edge_agent.mqtt.publisher import AgentPublisher, client_id_for
from edge_agent.mqtt.transport import MqttTransport, TransportEvents, Will
from edge_agent.outbox import Outbox
from tests.helpers.mqtt_broker import MosquittoBroker, Subscriber, wait_until

pytestmark = pytest.mark.mqtt


def _cfg(broker: MosquittoBroker, **extra: object) -> MqttConfig:
    return MqttConfig.model_validate(
        {
            "host": "127.0.0.1",
            "port": broker.port,
            "reconnect_min_delay_s": 0.1,
            "reconnect_max_delay_s": 1.0,
            "keepalive_s": 5,
            **extra,
        }
    )


def _frame(i: int, boxes: int = 1) -> dict:
    box = {"x1": 10.0, "y1": 20.0, "x2": 50.5, "y2": 60.0, "score": 0.87, "track_id": 4}
    return {
        "ts": datetime.now(timezone.utc),
        "frame": i,
        "count": boxes,
        "unique_count": i,
        "detections": [box] * boxes,
    }


def _track(i: int) -> dict:
    now = datetime.now(timezone.utc)
    return {"event": "new", "track_id": i, "first_seen": now, "last_seen": now, "frames": 3, "max_score": 0.9}


@pytest.fixture
def publishers(tmp_path: Path) -> Iterator[Callable[..., AgentPublisher]]:
    made: list[tuple[AgentPublisher, Outbox]] = []

    def make(cfg: MqttConfig, device_id: str = "dev1", name: str = "outbox.db", **outbox_kw: object):
        outbox = Outbox(tmp_path / name, **outbox_kw)  # type: ignore[arg-type]
        pub = AgentPublisher(cfg, device_id, outbox, software_version="9.9.9")
        made.append((pub, outbox))
        return pub

    yield make
    for pub, outbox in made:
        pub.stop(timeout=1.0)
        outbox.close()


# -- refused PUBACKs ------------------------------------------------------------------------------------------------


def test_refused_puback_keeps_the_row_and_retries_until_allowed(
    mosquitto_factory: Callable[..., MosquittoBroker],
    mqtt_subscriber: Callable[..., Subscriber],
    publishers: Callable[..., AgentPublisher],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 15 s ACL mistake once lost every count published meanwhile; now they wait and go out once allowed."""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite #\n")
    # (The helper's `max_queued_messages 0` makes Mosquitto 2.0.11 also drop the connection after each denied
    # QoS 1 publish; nothing is lost then either, but this test is about the PUBACK, so use the default queue.)
    broker = mosquitto_factory("acl", extra_conf=f"acl_file {acl}\nmax_queued_messages 1000").start()
    sub = mqtt_subscriber(broker, ["starfish/dev1/+/counts"])
    pub = publishers(_cfg(broker, reconnect_max_delay_s=1.0))
    pub.start()
    assert pub.wait_connected(10)
    seqs = [pub.publish_counts("cam0", _frame(i)) for i in range(5)]
    assert wait_until(lambda: set(seqs) <= set(sub.seqs()), 10)

    # The operator's mistake: the counts topic is denied (MQTT 5 answers with PUBACK "Not authorized").
    acl.write_text("topic deny starfish/dev1/cam0/counts\ntopic readwrite #\n")
    broker.reload()
    time.sleep(0.5)
    with caplog.at_level(logging.WARNING, logger="edge_agent.mqtt.publisher"):
        seqs += [pub.publish_counts("cam0", _frame(i)) for i in range(5, 25)]
        assert wait_until(lambda: pub.rejected_by_broker >= 20, 10), pub.rejected_by_broker
        time.sleep(1.5)  # at least one retry round is refused again
    assert pub.outbox_depth == 20  # refused rows stay in the outbox
    assert any(
        "refused stored message" in r.getMessage() and "stays in the outbox" in r.getMessage() for r in caplog.records
    )
    stats = mqtt_subscriber(broker, ["starfish/dev1/stats"], client_id="stats")
    assert pub.publish_stats({})
    assert wait_until(lambda: stats.on("/stats"), 5)
    doc = stats.on("/stats")[-1].json()
    assert doc["rejected_by_broker"] >= 20 and doc["refused_waiting"] > 0 and doc["dropped_by_policy"] == 0

    # Fixed: every count arrives, none was lost.
    acl.write_text("topic readwrite #\n")
    broker.reload()
    seqs += [pub.publish_counts("cam0", _frame(i)) for i in range(25, 30)]
    assert wait_until(lambda: set(seqs) <= set(sub.seqs()), 20), sorted(set(seqs) - set(sub.seqs()))
    assert wait_until(lambda: pub.outbox_depth == 0, 10)
    assert sorted(set(sub.seqs())) == list(range(1, 31))
    retried = [m.json() for m in sub.on("/counts") if 6 <= m.json()["seq"] <= 25]
    assert retried and all(d["historical"] for d in retried)  # re-sent copies are marked as replayed


# -- inbound size ---------------------------------------------------------------------------------------------------


def test_oversized_inbound_publish_never_reaches_the_agent(
    mosquitto: MosquittoBroker,
    mqtt_subscriber: Callable[..., Subscriber],
    publishers: Callable[..., AgentPublisher],
) -> None:
    pub = publishers(_cfg(mosquitto, max_inbound_bytes=4096))
    received: list[tuple[str, int]] = []
    pub.on_command(lambda topic, payload: received.append((topic, len(payload))))
    pub.set_camera_status("cam0", "online")
    pub.start()
    assert pub.wait_connected(10)
    sender = mqtt_subscriber(mosquitto, ["nothing/here"], client_id="sender")
    assert wait_until(lambda: pub._ready, 5)  # noqa: SLF001 - subscriptions acknowledged
    # 8 MiB: with Maximum Packet Size in the CONNECT, the broker discards it instead of sending it to us.
    sender.client.publish("starfish/dev1/model/set", b'{"x":"' + b"a" * (8 * 2**20) + b'"}', qos=1).wait_for_publish(10)
    sender.client.publish("starfish/dev1/model/set", b'{"version": 5}', qos=1).wait_for_publish(5)
    assert wait_until(lambda: received, 5)
    time.sleep(0.3)
    assert received == [("starfish/dev1/model/set", 14)]
    assert pub.inbound_rejected == 0  # it was never even seen, so there was nothing to reject


# -- two agents with one device id ----------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_two_agents_with_one_device_id_warn_and_back_off(
    protocol: str,
    mosquitto: MosquittoBroker,
    publishers: Callable[..., AgentPublisher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = _cfg(mosquitto, protocol=protocol, reconnect_min_delay_s=0.05, reconnect_max_delay_s=2.0)
    first = publishers(cfg, name="a.db")
    second = publishers(cfg, name="b.db")  # flashed from the same image: same device id, its own outbox
    with caplog.at_level(logging.WARNING, logger="edge_agent.mqtt.transport"):
        first.start()
        assert first.wait_connected(10)
        second.start()
        time.sleep(6.0)
    fights = first.reconnects + second.reconnects
    # Without the backoff both reconnect every ~0.05-0.1 s and kick each other: dozens of reconnects.
    assert fights <= 10, fights
    warnings = [r.getMessage() for r in caplog.records if "same device_id" in r.getMessage()]
    assert warnings and client_id_for("dev1") in warnings[0]
    assert len(warnings) <= 2  # said once per agent, not once per reconnect
    assert first._transport.takeovers + second._transport.takeovers >= 1  # noqa: SLF001


# -- Home Assistant status flood ------------------------------------------------------------------------------------


def test_home_assistant_status_flood_is_coalesced(
    mosquitto: MosquittoBroker,
    mqtt_subscriber: Callable[..., Subscriber],
    publishers: Callable[..., AgentPublisher],
) -> None:
    sub = mqtt_subscriber(mosquitto, ["homeassistant/sensor/#"])
    pub = publishers(_cfg(mosquitto))
    pub.set_camera_status("cam0", "online")
    pub.start()
    assert wait_until(lambda: len(sub.on("/config")) == 5, 10)
    for _ in range(140):
        sub.client.publish("homeassistant/status", b"online", qos=0)
    time.sleep(3.0)
    assert len(sub.on("/config")) == 10  # one re-publish for the whole burst (it used to be 140 of them)


# -- retained count and camera statuses ----------------------------------------------------------------------------


def test_count_value_only_on_change_and_cameras_offline_after_stop(
    mosquitto: MosquittoBroker,
    mqtt_subscriber: Callable[..., Subscriber],
    tmp_path: Path,
) -> None:
    sub = mqtt_subscriber(mosquitto, ["starfish/dev1/#"])
    outbox = Outbox(tmp_path / "o.db")
    pub = AgentPublisher(_cfg(mosquitto), "dev1", outbox, "9.9.9")
    pub.set_camera_status("cam0", "online")
    pub.set_camera_status("cam1", "disabled")
    pub.start()
    assert wait_until(lambda: pub._ready, 10)  # noqa: SLF001
    for value in (1, 1, 1, 2, 2, 0, 0, 0):
        pub.publish_count_value("cam0", value)
    time.sleep(0.5)
    assert [m.payload for m in sub.on("cam0/count")] == [b"1", b"2", b"0"]
    pub.stop(timeout=3)
    outbox.close()
    late = mqtt_subscriber(mosquitto, ["starfish/dev1/+/status", "starfish/dev1/status"], client_id="late")
    assert wait_until(lambda: len(late.on("/status")) == 3, 5)
    retained = {m.topic: m.payload for m in late.on("/status")}
    assert retained == {
        "starfish/dev1/status": b"stopped",
        "starfish/dev1/cam0/status": b"offline",
        "starfish/dev1/cam1/status": b"disabled",
    }


# -- disk full ------------------------------------------------------------------------------------------------------


def test_full_outbox_counts_what_was_not_stored_and_recovers(
    mosquitto: MosquittoBroker,
    mqtt_subscriber: Callable[..., Subscriber],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sub = mqtt_subscriber(mosquitto, ["starfish/dev1/#"])
    # SQLite's own page limit gives a real "database or disk is full" where mounting a small fs is not allowed.
    outbox = Outbox(tmp_path / "o.db", max_pages=64)
    pub = AgentPublisher(_cfg(mosquitto), "dev1", outbox, "9.9.9")
    try:
        pub.start()
        assert pub.wait_connected(10)
        with caplog.at_level(logging.ERROR, logger="edge_agent.outbox_writer"):
            # The broker is stopped so nothing drains: the outbox fills up and then refuses writes.
            mosquitto.stop()
            for i in range(600):
                pub.publish_counts("cam0", _frame(i, boxes=20), wait=False)
                pub.publish_track_event("cam0", _track(i), wait=False)
            assert pub.flush(30)
        lost = pub.not_stored()
        assert lost.get("counts", 0) > 0 and lost.get("tracks", 0) > 0, lost
        stored = outbox.depth
        assert stored + lost["counts"] + lost["tracks"] == 1200  # every message is either stored or counted
        errors = [r.getMessage() for r in caplog.records if "could not be stored" in r.getMessage()]
        assert 1 <= len(errors) <= 5  # said (then every 10 s), not once per frame
        outbox._db.execute("PRAGMA max_page_count=1073741823")  # noqa: SLF001 - space again
        mosquitto.start()
        assert pub.wait_connected(10)
        # A fresh subscriber: the first one's reconnect backoff grew while the broker was down (how long depends on
        # machine load), and waiting that out would time the test client, not the outbox.
        sub = mqtt_subscriber(mosquitto, ["starfish/dev1/#"], client_id="after-restart")
        seq = pub.publish_counts("cam0", _frame(999))
        assert wait_until(lambda: seq in sub.seqs(), 20)
        assert wait_until(lambda: outbox.depth == 0, 20)
        stats = mqtt_subscriber(mosquitto, ["starfish/dev1/stats"], client_id="stats")
        assert pub.publish_stats({})
        assert wait_until(lambda: stats.on("/stats"), 5)
        assert stats.on("/stats")[-1].json()["not_stored"] == lost
    finally:
        pub.stop(timeout=2)
        outbox.close()


def test_outbox_id_in_every_counts_payload(
    mosquitto: MosquittoBroker,
    mqtt_subscriber: Callable[..., Subscriber],
    publishers: Callable[..., AgentPublisher],
) -> None:
    sub = mqtt_subscriber(mosquitto, ["starfish/+/+/counts"])
    a = publishers(_cfg(mosquitto), device_id="same", name="a.db")
    a.start()
    seqs = [a.publish_counts("cam0", _frame(i)) for i in range(3)]
    assert wait_until(lambda: len(sub.on("/counts")) == 3, 10)
    a.stop(timeout=2)
    # A rebuilt outbox (or a second device from the same image) restarts seq at 1 under a different outbox_id.
    b = publishers(_cfg(mosquitto), device_id="same", name="b.db")
    b.start()
    assert b.publish_counts("cam0", _frame(0)) == seqs[0] == 1
    assert wait_until(lambda: len(sub.on("/counts")) == 4, 10)
    keys = {(d["device_id"], d["outbox_id"], d["seq"]) for d in (m.json() for m in sub.on("/counts"))}
    assert len(keys) == 4 and {k[1] for k in keys} == {a.outbox_id, b.outbox_id}


# -- failures inside the CONNACK handler ---------------------------------------------------------------------------


def test_exception_in_the_connect_callback_is_a_failed_connection(
    mosquitto: MosquittoBroker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = _cfg(mosquitto)
    ready = threading.Event()
    # A filter paho itself refuses to subscribe ("#" must be last): the subscribe raises inside on_connect.
    events = TransportEvents(on_ready=ready.set, subscriptions=[("starfish/#/reset", 1)])
    transport = MqttTransport(cfg, "bad-filter", Will("starfish/bad/status", "offline"), events)
    seen_connected = []
    with caplog.at_level(logging.ERROR, logger="edge_agent.mqtt.transport"):
        transport.start()
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            seen_connected.append(transport.connected)
            time.sleep(0.01)
    try:
        assert not transport.connected and not ready.is_set()
        assert transport.last_error is not None and "connect handling failed" in transport.last_error
        assert any("treating the connection as failed" in r.getMessage() for r in caplog.records)
        assert sum(seen_connected) < len(seen_connected) * 0.1  # never settles into "connected"
    finally:
        transport.stop(final=None, timeout=1)


# -- QoS 0 write callbacks -----------------------------------------------------------------------------------------


def test_qos0_write_with_the_id_of_an_unacknowledged_stored_message_deletes_nothing(
    mosquitto: MosquittoBroker,
    publishers: Callable[..., AgentPublisher],
) -> None:
    """paho reports QoS 0 writes through the same callback, by message id; ids wrap at 65535, so a QoS 0 `count`
    can carry the id of a stored message still waiting for its PUBACK. That must not delete the stored row."""
    import signal

    pub = publishers(_cfg(mosquitto, keepalive_s=60))
    pub.start()
    assert wait_until(lambda: pub._ready, 10)  # noqa: SLF001
    proc = mosquitto._proc  # noqa: SLF001 - freeze the broker so the PUBACK cannot come yet
    assert proc is not None
    proc.send_signal(signal.SIGSTOP)
    try:
        pub.publish_counts("cam0", _frame(0), wait=False)
        assert pub.flush(5)
        inflight = pub._inflight  # noqa: SLF001
        assert wait_until(lambda: len(inflight) == 1, 5)
        mid = next(iter(inflight))
        client = pub._transport._client  # noqa: SLF001
        client._last_mid = mid - 1  # noqa: SLF001 - the wrap-around, without publishing 65535 messages first
        assert pub._transport.publish("starfish/dev1/cam0/count", "7", qos=0, retain=True) == mid  # noqa: SLF001
        time.sleep(0.5)  # the QoS 0 message is written to the socket (its callback fires), no PUBACK yet
        assert pub.outbox_depth == 1 and mid in inflight
    finally:
        proc.send_signal(signal.SIGCONT)
    assert wait_until(lambda: pub.outbox_depth == 0, 10)  # the real PUBACK deletes it


def test_connect_callback_failure_is_retried_and_then_connects(mosquitto: MosquittoBroker) -> None:
    """A transient failure while handling the CONNACK: not connected meanwhile, connected after the retry."""
    calls: list[int] = []
    ready = threading.Event()

    def on_connected(_receive_max: int | None) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first CONNACK handling fails")

    events = TransportEvents(
        on_connected=on_connected, on_ready=ready.set, subscriptions=[("starfish/dev9/+/reset", 1)]
    )
    transport = MqttTransport(_cfg(mosquitto), "flaky-connack", Will("starfish/dev9/status", "offline"), events)
    transport.start()
    try:
        assert ready.wait(10) and transport.connected
        assert len(calls) == 2 and transport.last_error is None
    finally:
        transport.stop(final=None, timeout=1)

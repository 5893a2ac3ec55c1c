"""AgentPublisher against a real Mosquitto started by the test: schema, retained state, connect order, outbox bound,
aggregation, inbound rejection, MQTT 3.1.1 / 5."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from edge_agent.mqtt.config import MqttConfig
from edge_agent.mqtt.payloads import CountsPayload, ModelPayload, StatsPayload, TrackEventPayload
from edge_agent.mqtt.publisher import AgentPublisher
from edge_agent.outbox import Outbox
from tests.helpers.mqtt_broker import MosquittoBroker, Subscriber, free_port, wait_until

pytestmark = pytest.mark.mqtt

MODEL = {"name": "cots-frcnn", "version": 3, "variant": "int8", "backend": "onnxruntime", "load_time_s": 0.8}


def mqtt_cfg(broker: MosquittoBroker | None = None, port: int | None = None, **extra: object) -> MqttConfig:
    return MqttConfig.model_validate(
        {
            "host": "127.0.0.1",
            "port": port or (broker.port if broker else 1883),
            "reconnect_min_delay_s": 0.1,
            "reconnect_max_delay_s": 0.5,
            "keepalive_s": 5,
            **extra,
        }
    )


def frame(i: int, count: int = 1) -> dict:
    return {
        "ts": datetime.now(timezone.utc),
        "frame": i,
        "count": count,
        "unique_count": i // 2 + 1,
        "detections": [{"x1": 10.0, "y1": 20.0, "x2": 50.5, "y2": 60.0, "score": 0.87, "track_id": 4}] * count,
    }


@pytest.fixture
def make_publisher(tmp_path: Path) -> Iterator[Callable[..., AgentPublisher]]:
    made: list[tuple[AgentPublisher, Outbox]] = []

    def make(cfg: MqttConfig, device_id: str = "dev1", outbox_name: str = "outbox.db", **outbox_kw: object):
        outbox = Outbox(tmp_path / outbox_name, **outbox_kw)  # type: ignore[arg-type]
        pub = AgentPublisher(cfg, device_id, outbox, software_version="9.9.9")
        made.append((pub, outbox))
        return pub

    yield make
    for pub, outbox in made:
        pub.stop(timeout=1.0)
        outbox.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_schema_and_retained_status(
    protocol: str,
    mosquitto: MosquittoBroker,
    mqtt_subscriber: Callable[..., Subscriber],
    make_publisher: Callable[..., AgentPublisher],
) -> None:
    sub = mqtt_subscriber(mosquitto, ["starfish/#", "homeassistant/#"])
    pub = make_publisher(mqtt_cfg(mosquitto, protocol=protocol))
    pub.set_model_info(MODEL)
    pub.set_camera_status("cam0", "online")
    pub.start()
    assert pub.wait_connected(10)
    assert wait_until(lambda: sub.on("dev1/status"), 5)
    seqs = [pub.publish_counts("cam0", frame(i, count=i % 3)) for i in range(5)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    pub.publish_count_value("cam0", 2)
    pub.publish_track_event(
        "cam0",
        {
            "event": "new",
            "track_id": 4,
            "first_seen": datetime.now(timezone.utc),
            "last_seen": datetime.now(timezone.utc),
            "frames": 3,
            "max_score": 0.9,
        },
    )
    pub.set_camera_status("cam0", "offline")
    assert wait_until(lambda: len(sub.on("/counts")) == 5 and sub.on("/tracks") and pub.outbox_depth == 0, 10)
    assert pub.publish_stats({"cameras": {"cam0": {"camera_fps": 30.0, "processed_fps": 12.5}}})
    assert wait_until(lambda: sub.on("/stats") and len(sub.on("cam0/status")) >= 2, 5)

    counts = [CountsPayload.model_validate(m.json()) for m in sub.on("/counts")]
    assert [c.seq for c in counts] == seqs
    assert {c.session for c in counts} == {pub.session}
    assert counts[1].detections is not None and counts[1].detections[0].track_id == 4
    assert counts[2].model is not None and counts[2].model.version == 3
    assert all(m.topic == "starfish/dev1/cam0/counts" for m in sub.on("/counts"))
    TrackEventPayload.model_validate(sub.on("/tracks")[0].json())
    stats = StatsPayload.model_validate(sub.on("/stats")[0].json())
    assert stats.software_version == "9.9.9" and stats.cameras["cam0"].processed_fps == 12.5
    model = ModelPayload.model_validate(sub.on("dev1/model")[0].json())
    assert model.name == "cots-frcnn" and model.load_time_s == 0.8
    assert [m.payload for m in sub.on("cam0/status")][-1] == b"offline"
    assert sub.on("cam0/count")[-1].payload == b"2"
    assert len(sub.on("/config")) == 5

    pub.stop(timeout=5)
    # A late subscriber sees the retained device state: stopped, plus the model and the camera status.
    late = mqtt_subscriber(mosquitto, ["starfish/dev1/#"], client_id="late")
    assert wait_until(lambda: late.on("dev1/status") and late.on("dev1/model") and late.on("cam0/status"), 5)
    assert late.on("dev1/status")[-1].payload == b"stopped" and late.on("dev1/status")[-1].retain
    assert late.on("cam0/status")[-1].payload == b"offline"


def test_connect_order_backlog_historical_then_live(
    mosquitto: MosquittoBroker,
    mqtt_subscriber: Callable[..., Subscriber],
    make_publisher: Callable[..., AgentPublisher],
    tmp_path: Path,
) -> None:
    """Broker unreachable at first: counts buffer; on connect: status, model, cameras, discovery, backlog, live."""
    port = free_port()
    late_broker = MosquittoBroker(tmp_path / "late", port=port)
    try:
        pub = make_publisher(mqtt_cfg(port=port))
        pub.set_model_info(MODEL)
        for cam in range(1, 8):  # 7 cameras: 30 retained state messages, more than Mosquitto's receive window (20)
            pub.set_camera_status(f"cam{cam}", "online")
        pub.start()
        buffered = [pub.publish_counts("cam0", frame(i)) for i in range(30)]
        time.sleep(0.3)
        assert not pub.connected and pub.outbox_depth == 30
        late_broker.start()
        sub = mqtt_subscriber(late_broker, ["starfish/#", "homeassistant/#"])  # before the publisher's retry
        assert wait_until(lambda: pub.connected, 10)
        assert wait_until(lambda: len(sub.on("/counts")) == 30, 10)
        live = [pub.publish_counts("cam0", frame(100 + i)) for i in range(5)]
        assert wait_until(lambda: len(sub.on("/counts")) == 35, 10)

        order = [t.split("/", 2)[-1] if t.startswith("starfish") else "discovery" for t in sub.topics()]
        first = {name: order.index(name) for name in ("status", "model", "cam0/status", "discovery", "cam0/counts")}
        assert first["status"] < first["model"] < first["cam0/status"] < first["discovery"] < first["cam0/counts"]
        assert order.count("discovery") == 8 * 3 + 2
        last_state = max(i for i, name in enumerate(order) if name == "discovery" or name.endswith("/status"))
        assert last_state < first["cam0/counts"]
        docs = [m.json() for m in sub.on("/counts")]
        assert [d["seq"] for d in docs] == buffered + live
        assert all(d["historical"] for d in docs[:30]) and not any(d["historical"] for d in docs[30:])
        assert wait_until(lambda: pub.outbox_depth == 0, 5)
    finally:
        late_broker.kill()


def test_drop_oldest_bound_while_broker_down(
    mosquitto_factory: Callable[..., MosquittoBroker],
    mqtt_subscriber: Callable[..., Subscriber],
    make_publisher: Callable[..., AgentPublisher],
) -> None:
    broker = mosquitto_factory("bound")
    pub = make_publisher(mqtt_cfg(broker), max_messages=50)
    pub.start()
    seqs = [pub.publish_counts("cam0", frame(i)) for i in range(80)]
    assert pub.outbox_depth == 50 and pub.dropped_by_policy == 30
    broker.start()
    sub = mqtt_subscriber(broker, ["starfish/dev1/+/counts"])
    assert wait_until(lambda: pub.connected, 10)
    assert wait_until(lambda: len(sub.on("/counts")) == 50, 10)
    assert sub.seqs() == seqs[30:]  # the oldest 30 were dropped, the rest kept in order
    stats_sub = mqtt_subscriber(broker, ["starfish/dev1/stats"], client_id="stats")
    assert pub.publish_stats({})
    assert wait_until(lambda: stats_sub.on("/stats"), 5)
    assert stats_sub.on("/stats")[-1].json()["dropped_by_policy"] == 30


def test_aggregate_mode(
    mosquitto: MosquittoBroker,
    mqtt_subscriber: Callable[..., Subscriber],
    make_publisher: Callable[..., AgentPublisher],
) -> None:
    sub = mqtt_subscriber(mosquitto, ["starfish/dev1/+/counts"])
    pub = make_publisher(mqtt_cfg(mosquitto, counts={"mode": "aggregate", "interval_s": 0.3}))
    pub.start()
    assert pub.wait_connected(10)
    results = []
    for i, count in enumerate([1, 4, 2, 0, 3]):
        results.append(pub.publish_counts("cam0", frame(i, count=count)))
        time.sleep(0.02)
    assert results == [None] * 5  # window still open
    assert wait_until(lambda: len(sub.on("/counts")) == 1, 5)  # closed by the sender's timer
    doc = sub.on("/counts")[0].json()
    assert doc["count"] == 4 and "detections" not in doc
    assert doc["aggregate"] == {
        "frames": 5,
        "first_ts": doc["aggregate"]["first_ts"],
        "first_frame": 0,
        "count_min": 0,
        "count_max": 4,
        "count_mean": 2.0,
    }
    assert doc["frame"] == 4


def test_inbound_garbage_is_counted_and_rejected(
    mosquitto: MosquittoBroker,
    mqtt_subscriber: Callable[..., Subscriber],
    make_publisher: Callable[..., AgentPublisher],
) -> None:
    sub = mqtt_subscriber(mosquitto, ["starfish/dev1/#", "homeassistant/#"])
    pub = make_publisher(mqtt_cfg(mosquitto, fleet="reef", max_inbound_bytes=4096))
    received: list[tuple[str, bytes]] = []
    lock = threading.Lock()

    def handler(topic: str, payload: bytes) -> None:
        with lock:
            received.append((topic, payload))
        if payload == b'{"boom": true}':
            raise RuntimeError("handler bug")

    pub.on_command(handler)
    pub.set_camera_status("cam0", "online")
    pub.start()
    assert pub.wait_connected(10)
    assert wait_until(lambda: len(sub.on("/config")) == 5, 5)
    garbage = [
        ("starfish/dev1/cam0/reset", b"\xff\xfe\xfd"),
        ("starfish/dev1/cam0/reset", b"not json"),
        ("starfish/dev1/model/set", b'{"url": '),
        ("starfish/dev1/model/set", b"[" * 4000),
        ("starfish/fleet/reef/model", b"\xc3\x28"),
        ("homeassistant/status", b"\x00\x01"),
        ("starfish/dev1/nocam/reset", b""),
    ]
    for topic, payload in garbage:
        sub.client.publish(topic, payload, qos=1)
    assert wait_until(lambda: pub.inbound_rejected == len(garbage), 10), pub.inbound_rejected
    sub.client.publish("starfish/dev1/cam0/reset", b"", qos=1)
    sub.client.publish("starfish/dev1/model/set", b'{"boom": true}', qos=1)
    sub.client.publish("starfish/fleet/reef/model", b'{"version": 4}', qos=1)
    assert wait_until(lambda: len(received) == 3, 5)
    assert [t for t, _ in received] == [
        "starfish/dev1/cam0/reset",
        "starfish/dev1/model/set",
        "starfish/fleet/reef/model",
    ]
    assert wait_until(lambda: pub.handler_errors == 1, 2)
    # Home Assistant restarting: discovery is re-sent.
    sub.client.publish("homeassistant/status", b"online", qos=1)
    assert wait_until(lambda: len(sub.on("/config")) == 10, 5)
    # Still alive and publishing.
    assert pub.connected
    seq = pub.publish_counts("cam0", frame(0))
    assert wait_until(lambda: seq in sub.seqs(), 5)
    assert pub.inbound_rejected == len(garbage)


def test_refused_connect_never_reports_connected(
    mosquitto_factory: Callable[..., MosquittoBroker],
    make_publisher: Callable[..., AgentPublisher],
    tmp_path: Path,
) -> None:
    pwfile = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pwfile), "agent", "right-password"], check=True)
    broker = mosquitto_factory("auth", allow_anonymous=False, extra_conf=f"password_file {pwfile}").start()
    bad = make_publisher(mqtt_cfg(broker, username="agent", password="wrong"), device_id="bad", outbox_name="b.db")
    bad.start()
    bad.publish_counts("cam0", frame(0))
    assert wait_until(lambda: bad.last_error is not None and "refused" in bad.last_error, 10)
    time.sleep(0.5)  # paho retries meanwhile; each retry is refused again
    assert not bad.connected and bad.outbox_depth == 1
    good = make_publisher(
        mqtt_cfg(broker, username="agent", password="right-password"), device_id="good", outbox_name="g.db"
    )
    good.start()
    assert good.wait_connected(10)


def test_stats_provider_on_interval(
    mosquitto: MosquittoBroker,
    mqtt_subscriber: Callable[..., Subscriber],
    make_publisher: Callable[..., AgentPublisher],
) -> None:
    sub = mqtt_subscriber(mosquitto, ["starfish/dev1/stats"])
    pub = make_publisher(mqtt_cfg(mosquitto, stats_interval_s=0.2))
    calls: list[float] = []

    def provider() -> dict:
        calls.append(time.monotonic())
        if len(calls) == 2:
            raise RuntimeError("flaky sensor")  # logged; the next interval still publishes
        return {"cpu_temp_c": 51.5, "cameras": {"cam0": {"frames": len(calls)}}}

    pub.set_stats_provider(provider)
    pub.start()
    assert wait_until(lambda: len(sub.on("/stats")) >= 3, 10)
    docs = [m.json() for m in sub.on("/stats")]
    assert all(d["cpu_temp_c"] == 51.5 and d["outbox_depth"] >= 0 for d in docs)
    assert 2 not in [d["cameras"]["cam0"]["frames"] for d in docs]

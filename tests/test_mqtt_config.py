"""MQTT config, topics, payload models, discovery configs and inbound validation (no broker needed)."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edge_agent.mqtt.config import MqttConfig
from edge_agent.mqtt.discovery import discovery_messages
from edge_agent.mqtt.inbound import InboundGate, InboundKind
from edge_agent.mqtt.payloads import CountsInput, CountsPayload, StatsInput
from edge_agent.mqtt.topics import Topics

# -- config -----------------------------------------------------------------------------------------------------


def test_defaults_are_valid() -> None:
    cfg = MqttConfig()
    assert (cfg.host, cfg.port, cfg.protocol, cfg.topic_prefix) == ("127.0.0.1", 1883, "5", "starfish")
    assert cfg.resolved_password() is None
    assert all(f.description for f in MqttConfig.model_fields.values())


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"hots": "x"}, "hots"),
        ({"port": 0}, "port"),
        ({"port": "abc"}, "port"),
        ({"protocol": "4"}, "protocol"),
        ({"username": "u"}, "username"),
        ({"password": "p"}, "username"),
        ({"username": "u", "password": "p", "password_env": "X"}, "password_env"),
        ({"keepalive_s": 1}, "keepalive_s"),
        ({"counts": {"mode": "sometimes"}}, "counts.mode"),
        ({"counts": {"interval_s": 0}}, "counts.interval_s"),
        ({"discovery": {"enable": True}}, "discovery.enable"),
        ({"tls": {"ca_file": "/nonexistent/ca.pem"}}, "ca_file"),
        ({"tls": {"cert_file": "/nonexistent/c.pem"}}, "key_file"),
        ({"tls": {"verify": False}}, "tls.verify"),
        ({"reconnect_min_delay_s": 10, "reconnect_max_delay_s": 1}, "reconnect_max_delay_s"),
    ],
)
def test_bad_config_names_the_field(raw: dict, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        MqttConfig.model_validate(raw)
    assert field in str(info.value)


def test_password_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = MqttConfig(username="agent", password_env="STARFISH_TEST_MQTT_PW")
    with pytest.raises(ValueError, match="STARFISH_TEST_MQTT_PW"):
        cfg.resolved_password()
    monkeypatch.setenv("STARFISH_TEST_MQTT_PW", "s3cret")
    assert cfg.resolved_password() == "s3cret"
    assert "s3cret" not in repr(MqttConfig(username="u", password="s3cret"))  # secrets stay out of logs


def test_tls_files_must_exist_and_pair(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    with pytest.raises(ValidationError, match="not a readable PEM CA"):  # loaded now, not at connect time
        MqttConfig.model_validate({"tls": {"ca_file": str(ca), "insecure": True}})
    system_ca = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    if system_ca.is_file():
        cfg = MqttConfig.model_validate({"tls": {"ca_file": str(system_ca), "insecure": True}})
        assert cfg.tls is not None and cfg.tls.ca_file == system_ca
    with pytest.raises(ValidationError, match="cert_file"):
        MqttConfig.model_validate({"tls": {"key_file": str(ca)}})


_KNOWN = set(MqttConfig.model_fields)


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=12).filter(lambda k: k not in _KNOWN), st.integers(), min_size=1))
def test_any_unknown_key_is_rejected(raw: dict) -> None:
    with pytest.raises(ValidationError) as info:
        MqttConfig.model_validate(raw)
    assert any(e["type"] == "extra_forbidden" for e in info.value.errors())


# -- topics ----------------------------------------------------------------------------------------------------


def test_topics_follow_the_contract() -> None:
    t = Topics("starfish", "jetson-01")
    assert t.status == "starfish/jetson-01/status"
    assert t.counts("cam0") == "starfish/jetson-01/cam0/counts"
    assert t.count_value("cam0") == "starfish/jetson-01/cam0/count"
    assert t.camera_status("cam0") == "starfish/jetson-01/cam0/status"
    assert t.tracks("cam0") == "starfish/jetson-01/cam0/tracks"
    assert t.model_set == "starfish/jetson-01/model/set"
    assert t.fleet_model("reef") == "starfish/fleet/reef/model"
    assert t.camera_of("starfish/jetson-01/cam0/reset") == "cam0"
    assert t.camera_of("starfish/other/cam0/reset") is None


@pytest.mark.parametrize("bad", ["", "a/b", "cam+", "cam#", "x" * 65, "caméra", "a b"])
def test_bad_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="device_id"):
        Topics("starfish", bad)
    with pytest.raises(ValueError, match="camera_id"):
        Topics("starfish", "dev").counts(bad)


def test_reserved_camera_ids() -> None:
    with pytest.raises(ValueError, match="reserved"):
        Topics("starfish", "dev").counts("model")


# -- payloads -----------------------------------------------------------------------------------------------------


def test_counts_input_is_strict() -> None:
    good = {
        "ts": "2026-01-01T00:00:00Z",
        "frame": 3,
        "count": 2,
        "unique_count": 5,
        "detections": [{"x1": 1, "y1": 2, "x2": 3, "y2": 4, "score": 0.9, "track_id": 7}],
    }
    item = CountsInput.model_validate(good)
    doc = json.loads(
        CountsPayload(
            **item.model_dump(), device_id="d", camera_id="c", session=1, outbox_id="o1", seq=1
        ).model_dump_json(exclude_none=True)
    )
    assert doc["ts"] == "2026-01-01T00:00:00.000Z"
    assert doc["detections"][0]["track_id"] == 7 and doc["schema_version"] == 1 and doc["historical"] is False
    for broken, name in [
        ({**good, "cnt": 1}, "cnt"),
        ({**good, "count": -1}, "count"),
        ({**good, "detections": [{"x1": 1}]}, "detections"),
    ]:
        with pytest.raises(ValidationError, match=name):
            CountsInput.model_validate(broken)
    with pytest.raises(ValidationError, match="fps"):
        StatsInput.model_validate({"cameras": {"cam0": {"fps": 3}}})


# -- discovery ---------------------------------------------------------------------------------------------------


def test_discovery_configs() -> None:
    t = Topics("starfish", "dev1")
    msgs = list(discovery_messages(t, ["cam0", "cam1"], "1.2.3"))
    ids = [json.loads(p)["unique_id"] for _, p in msgs]
    assert len(ids) == len(set(ids)) == 8
    for topic, payload in msgs:
        doc = json.loads(payload)
        assert topic.startswith("homeassistant/sensor/starfish_dev1/") and topic.endswith("/config")
        assert doc["device"]["identifiers"] == ["starfish_dev1"] and doc["device"]["sw_version"] == "1.2.3"
        assert doc["availability"][0]["topic"] == t.status
        assert doc["state_topic"].startswith("starfish/dev1/")
    count = json.loads(dict(msgs)["homeassistant/sensor/starfish_dev1/cam0_count/config"])
    assert count["state_topic"] == t.count_value("cam0")


# -- inbound validation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("starfish/d/cam0/reset", b"\xff\xfe\x00garbage", "UTF-8"),
        ("starfish/d/cam0/reset", b"x" * 2000, "oversized"),
        ("starfish/d/cam0/reset", b"[1, 2]", "JSON object"),
        ("starfish/d/cam9/reset", b"", "unknown camera"),
        ("starfish/d/model/set", b"{not json", "JSON object"),
        ("starfish/d/model/set", b'"just a string"', "JSON object"),
        ("starfish/d/model/set", b"[" * 100_000, "oversized"),
        ("starfish/fleet/reef/model", b"\x80\x81", "UTF-8"),
        ("homeassistant/status", b"maybe", "Home Assistant"),
        ("starfish/d/elsewhere", b"{}", "unexpected topic"),
    ],
)
def test_inbound_rejections_are_counted(topic: str, payload: bytes, reason: str) -> None:
    gate = InboundGate(Topics("starfish", "d"), "reef", max_bytes=1024)
    verdict = gate.check(topic, payload, {"cam0"})
    assert verdict.reason is not None and reason in verdict.reason
    assert gate.rejected == 1


def test_deeply_nested_json_is_rejected_not_raised() -> None:
    gate = InboundGate(Topics("starfish", "d"), None, max_bytes=10_000_000)
    assert gate.check("starfish/d/model/set", b"[" * 1_000_000, set()).reason is not None


@pytest.mark.parametrize(
    ("topic", "payload", "kind"),
    [
        ("starfish/d/cam0/reset", b"", InboundKind.RESET),
        ("starfish/d/cam0/reset", b'{"reason": "new survey"}', InboundKind.RESET),
        ("starfish/d/model/set", b'{"url": "http://x", "sha256": "ab", "version": 2}', InboundKind.MODEL_SET),
        ("starfish/fleet/reef/model", b'{"version": 2}', InboundKind.FLEET_MODEL),
        ("homeassistant/status", b"online", InboundKind.HA_STATUS),
    ],
)
def test_inbound_accepts_valid_messages(topic: str, payload: bytes, kind: InboundKind) -> None:
    gate = InboundGate(Topics("starfish", "d"), "reef", max_bytes=1024)
    verdict = gate.check(topic, payload, {"cam0"})
    assert verdict.reason is None and verdict.kind is kind
    assert gate.rejected == 0


_INBOUND_TOPICS = [
    "starfish/d/cam0/reset",
    "starfish/d/model/set",
    "starfish/fleet/reef/model",
    "homeassistant/status",
    "starfish/d/cam1/reset",
]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(_INBOUND_TOPICS), st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
@example("starfish/d/cam0/reset", b"\x1c")  # found by hypothesis: str.strip() swallowed it
def test_arbitrary_inbound_payloads_never_raise(topic: str, payload: bytes) -> None:
    gate = InboundGate(Topics("starfish", "d"), "reef", max_bytes=200)
    verdict = gate.check(topic, payload, {"cam0"})
    assert gate.rejected == (0 if verdict.reason is None else 1)
    if verdict.reason is None and not verdict.ignore and verdict.kind is not InboundKind.HA_STATUS:
        assert payload.strip(b" \t\r\n") == b"" or isinstance(json.loads(payload), dict)

"""The signed announcement: every refusal is its own error, and nothing unsigned is interpreted."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from edge_agent.bundle import generate_keypair, load_private_key, load_public_key
from edge_agent.device_state import DeviceState
from edge_agent.update import errors
from edge_agent.update.announcement import (
    Announcement,
    canonical_json,
    parse_announcement,
    sign_announcement,
    verify_announcement,
    version_tuple,
)

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)


@pytest.fixture()
def keys(tmp_path: Path):
    generate_keypair(tmp_path / "release.pem", tmp_path / "release.pub")
    generate_keypair(tmp_path / "other.pem", tmp_path / "other.pub")
    return (
        load_private_key(tmp_path / "release.pem"),
        load_public_key(tmp_path / "release.pub"),
        load_private_key(tmp_path / "other.pem"),
    )


@pytest.fixture()
def state(tmp_path: Path):
    with DeviceState(tmp_path / "state") as st:
        yield st


def announcement(**changes) -> Announcement:
    fields = dict(
        name="starfish-cots",
        version=3,
        url="http://127.0.0.1:1/b.tar",
        sha256="a" * 64,
        size=1000,
        created_at=NOW - timedelta(hours=1),
        expires_at=NOW + timedelta(days=7),
        min_agent_version="0.1.0",
        platforms=["linux-x86_64", "linux-aarch64"],
    )
    fields.update(changes)
    return Announcement(**fields)


def verify(raw: bytes, public, state: DeviceState, **kw):
    args = dict(device_state=state, platform="linux-x86_64", agent_version="0.1.0", max_bundle_bytes=10_000, now=NOW)
    args.update(kw)
    return verify_announcement(raw, [public], **args)


def test_round_trip_and_canonical_bytes(keys, state):
    private, public, _ = keys
    raw = sign_announcement(announcement(), private)
    signed = verify(raw, public, state)
    assert signed.announcement.version == 3
    assert signed.signed_bytes == canonical_json(json.loads(raw)["signed"])
    assert b" " not in signed.signed_bytes
    # Whitespace and key order on the wire do not matter: the device verifies the canonical form.
    pretty = json.dumps(json.loads(raw), indent=4, sort_keys=False).encode()
    assert verify(pretty, public, state).digest == signed.digest


def test_unsigned_refused(keys, state):
    private, public, _ = keys
    data = json.loads(sign_announcement(announcement(), private))
    data["signatures"] = []
    with pytest.raises(errors.UnsignedAnnouncement):
        verify(json.dumps(data).encode(), public, state)
    with pytest.raises(errors.MalformedAnnouncement):  # a bare announcement, no envelope
        verify(json.dumps(data["signed"]).encode(), public, state)


def test_bad_signature_and_untrusted_key_refused(keys, state):
    private, public, other = keys
    with pytest.raises(errors.BadAnnouncementSignature):
        verify(sign_announcement(announcement(), other), public, state)
    data = json.loads(sign_announcement(announcement(), private))
    data["signed"]["version"] = 4  # tampered after signing
    with pytest.raises(errors.BadAnnouncementSignature):
        verify(json.dumps(data).encode(), public, state)
    data = json.loads(sign_announcement(announcement(), private))
    data["signed"]["extra"] = "field"  # also changes the signed bytes
    with pytest.raises(errors.BadAnnouncementSignature):
        verify(json.dumps(data).encode(), public, state)
    data = json.loads(sign_announcement(announcement(), private))
    data["signatures"][0]["sig"] = base64.b64encode(b"\0" * 64).decode()
    with pytest.raises(errors.BadAnnouncementSignature):
        verify(json.dumps(data).encode(), public, state)


def test_signed_but_invalid_schema_refused(keys, state):
    private, public, _ = keys
    signed = announcement().model_dump(mode="json")
    signed["unknown"] = 1
    message = canonical_json(signed)
    raw = canonical_json(
        {"signed": signed, "signatures": [{"keyid": "x", "sig": base64.b64encode(private.sign(message)).decode()}]}
    )
    with pytest.raises(errors.MalformedAnnouncement, match="unknown"):
        verify(raw, public, state)


def test_duplicate_keys_nesting_and_size_refused(keys, state):
    private, public, _ = keys
    raw = sign_announcement(announcement(), private).decode()
    dup = raw.replace('"version":3', '"version":3,"version":9', 1)
    with pytest.raises(errors.MalformedAnnouncement, match="repeats the key 'version'"):
        verify(dup.encode(), public, state)
    deep = raw[:-1] + ',"x":' + "[" * 50 + "]" * 50 + "}"
    with pytest.raises(errors.MalformedAnnouncement, match="nested"):
        verify(deep.encode(), public, state)
    with pytest.raises(errors.MalformedAnnouncement, match="nested too deeply"):
        verify(("[" * 100_000 + "]" * 100_000).encode(), public, state, max_bytes=1 << 20)
    with pytest.raises(errors.MalformedAnnouncement, match="more than"):
        verify(raw.encode(), public, state, max_bytes=100)
    with pytest.raises(errors.MalformedAnnouncement, match="UTF-8"):
        verify(b"\xff\xfe", public, state)


def test_expired_refused(keys, state):
    private, public, _ = keys
    raw = sign_announcement(announcement(expires_at=NOW - timedelta(seconds=1)), private)
    with pytest.raises(errors.ExpiredAnnouncement, match="expired"):
        verify(raw, public, state)


def test_oversize_platform_agent_refused(keys, state):
    private, public, _ = keys
    with pytest.raises(errors.OversizeAnnouncement):
        verify(sign_announcement(announcement(size=10_001), private), public, state)
    with pytest.raises(errors.WrongPlatform):
        verify(sign_announcement(announcement(platforms=["linux-aarch64"]), private), public, state)
    verify(sign_announcement(announcement(platforms=["any"]), private), public, state)
    with pytest.raises(errors.AgentTooOld, match="0.10.0"):
        verify(
            sign_announcement(announcement(min_agent_version="0.10.0"), private), public, state, agent_version="0.9.3"
        )
    assert version_tuple("0.2.0.dev1") == (0, 2) and version_tuple("1.0") == version_tuple("1.0.0")


def test_floor_bad_version_and_replay_refused(keys, state):
    private, public, _ = keys
    state.raise_floor("starfish-cots", 3)
    with pytest.raises(errors.DowngradeRefused):
        verify(sign_announcement(announcement(version=2), private), public, state)
    # An explicit, signed rollback may go below the floor...
    assert verify(sign_announcement(announcement(version=2, rollback=True), private), public, state)
    # ...but never to a version that failed here.
    state.mark_bad("starfish-cots", 2, "check_failed: golden frames")
    with pytest.raises(errors.KnownBadVersion, match="golden frames"):
        verify(sign_announcement(announcement(version=2, rollback=True), private), public, state)
    state.mark_bad("starfish-cots", 5, "probation_failed")
    with pytest.raises(errors.KnownBadVersion):
        verify(sign_announcement(announcement(version=5), private), public, state)
    with pytest.raises(errors.ReplayedAnnouncement):
        verify(sign_announcement(announcement(version=4), private), public, state, last_created_at=NOW)
    with pytest.raises(errors.WrongModel):
        verify(sign_announcement(announcement(version=4), private), public, state, expected_name="other")


@pytest.mark.parametrize(
    "changes",
    [
        {"url": "file:///etc/passwd"},
        {"url": "http:///nohost"},
        {"url": "http://h/a b"},
        {"sha256": "A" * 64},
        {"size": 0},
        {"created_at": datetime(2026, 1, 1)},
        {"expires_at": NOW - timedelta(days=1)},
        {"min_agent_version": "latest"},
        {"platforms": []},
        {"name": "Bad Name"},
        {"schema_version": 2},
    ],
)
def test_schema_refuses(changes):
    with pytest.raises(ValueError):
        announcement(**changes)


def test_each_error_has_its_own_code():
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.UpdateError)]
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes)), codes
    assert parse_announcement  # imported API

"""The signed model announcement: what a release publishes and a device verifies before it fetches a byte.

Wire format (UTF-8 JSON, the payload of `…/model/set` or the retained `{prefix}/fleet/{fleet}/model`)::

    {"signed": {...Announcement fields...},
     "signatures": [{"keyid": "<16 hex>", "sig": "<base64 of 64 bytes>"}]}

Each signature is ed25519 over the *canonical* JSON of ``signed``: keys sorted, no spaces (``","`` and ``":"``
separators), UTF-8 without escaping. The device re-serialises the object it parsed and verifies those bytes, so
whitespace or key order on the wire do not matter, and nothing inside ``signed`` is interpreted (not even
validated as a schema) before a trusted release key has vouched for it — TUF's order: trust the metadata, then
fetch bounded bytes.

`verify_announcement` then checks, each with its own error class (`edge_agent.update.errors`): expiry (freeze),
replay of an older announcement, model name, target platform, agent version, size cap, the anti-rollback floor and
the versions known bad on this device (`edge_agent.device_state`).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge_agent.bundle.errors import SignatureError
from edge_agent.bundle.manifest import Sha256Hex
from edge_agent.bundle.signing import key_id, verify_signature
from edge_agent.device_state import DeviceState
from edge_agent.update.errors import (
    AgentTooOld,
    BadAnnouncementSignature,
    DowngradeRefused,
    ExpiredAnnouncement,
    KnownBadVersion,
    MalformedAnnouncement,
    OversizeAnnouncement,
    ReplayedAnnouncement,
    UnsignedAnnouncement,
    WrongModel,
    WrongPlatform,
)

SCHEMA_VERSION = 1
ANY_PLATFORM = "any"
# Our envelope is three levels deep and the signed object four; anything much deeper is an attack on the parser.
MAX_DEPTH = 8
MAX_SIGNATURES = 8

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_VERSION = re.compile(r"^\d{1,6}(\.\d{1,6}){0,3}$")
_PLATFORM = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_DEVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_SCHEMES = ("http://", "https://", "s3://")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rollout(_Strict):
    """Which devices act on this announcement, and when the publisher stops the wave."""

    wave: int = Field(0, ge=0, le=1000, description="Wave number (0: canaries, then 1, 2...).")
    canary: bool = Field(False, description="This wave is the canary wave.")
    devices: tuple[str, ...] | None = Field(
        None, max_length=10_000, description="Device ids this wave targets (None: every device that receives it)."
    )
    max_failure_share: float = Field(
        0.2, ge=0, le=1, description="Share of failed devices in a wave at which the publisher stops the rollout."
    )

    @field_validator("devices")
    @classmethod
    def _ids(cls, devices: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for device in devices or ():
            if not _DEVICE.match(device):
                raise ValueError(f"device id {device!r} must match {_DEVICE.pattern}")
        return devices


class Announcement(_Strict):
    """The signed part: one model version a release offers (or, with ``rollback``, orders back)."""

    schema_version: int = Field(SCHEMA_VERSION, ge=1, description="Announcement schema; newer ones are refused.")
    name: str = Field(description="Model name (the bundle manifest's `name`).")
    version: int = Field(ge=1, description="Bundle version (the manifest's `version`).")
    url: str = Field(max_length=2048, description="Where the bundle .tar is fetched: http(s):// or s3://.")
    sha256: Sha256Hex = Field(description="sha256 of the bundle .tar (lower-case hex).")
    size: int = Field(ge=1, description="Exact size of the bundle .tar in bytes: the download stops past it.")
    created_at: datetime = Field(description="When the release signed this (UTC); older replays are refused.")
    expires_at: datetime = Field(description="After this the announcement is stale and refused (freeze defence).")
    min_agent_version: str = Field("0", description="Oldest starfish-edge agent version that can run this bundle.")
    platforms: tuple[str, ...] = Field(
        (ANY_PLATFORM,),
        min_length=1,
        max_length=64,
        description=f"Platform tags (`linux-aarch64`...) that may install it; {ANY_PLATFORM!r}: all.",
    )
    rollout: Rollout = Field(default_factory=Rollout, description="Wave / canary information.")
    rollback: bool = Field(
        False,
        description="An explicit, signed rollback to this named version: accepted below the anti-rollback floor "
        "(never for a version marked bad on the device).",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(f"name must match {_NAME.pattern}, got {name!r}")
        return name

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        if not url.startswith(_SCHEMES) or len(url.split("://", 1)[1].split("/", 1)[0]) == 0:
            raise ValueError(f"url must be http://, https:// or s3:// with a host, got {url!r}")
        if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
            raise ValueError("url must not contain spaces or control characters")
        return url

    @field_validator("created_at", "expires_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("times must carry a timezone (UTC)")
        return value.astimezone(timezone.utc)

    @field_validator("min_agent_version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not _VERSION.match(value):
            raise ValueError(f"min_agent_version must be dotted numbers (e.g. 0.2.0), got {value!r}")
        return value

    @field_validator("platforms")
    @classmethod
    def _platforms(cls, platforms: tuple[str, ...]) -> tuple[str, ...]:
        for tag in platforms:
            if not _PLATFORM.match(tag):
                raise ValueError(f"platform tag {tag!r} must match {_PLATFORM.pattern}")
        return platforms

    @model_validator(mode="after")
    def _consistent(self) -> Announcement:
        if self.schema_version > SCHEMA_VERSION:
            raise ValueError(f"schema_version {self.schema_version} is newer than supported {SCHEMA_VERSION}")
        if self.expires_at <= self.created_at:
            raise ValueError("expires_at must be after created_at")
        return self

    def targets(self, device_id: str) -> bool:
        """Whether this device is in the announcement's wave (a wave without a device list targets everyone)."""
        return self.rollout.devices is None or device_id in self.rollout.devices

    def describe(self) -> str:
        return f"{self.name} v{self.version}{' (rollback)' if self.rollback else ''}"


class SignedAnnouncement(BaseModel):
    """A parsed envelope whose signature verified: the announcement and the bytes that were signed."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    announcement: Announcement
    signed_bytes: bytes  # canonical JSON of `signed`: what the signature covers; identifies the announcement
    key_id: str

    @property
    def digest(self) -> str:
        """sha256 of the signed bytes: the identity of this announcement (a retained repeat has the same)."""
        import hashlib

        return hashlib.sha256(self.signed_bytes).hexdigest()


def canonical_json(data: Any) -> bytes:
    """The bytes that get signed: sorted keys, no insignificant whitespace, UTF-8 unescaped."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sign_announcement(
    announcement: Announcement, private_keys: Ed25519PrivateKey | Iterable[Ed25519PrivateKey]
) -> bytes:
    """The wire bytes of ``announcement`` signed by each of ``private_keys`` (release side)."""
    keys = [private_keys] if isinstance(private_keys, Ed25519PrivateKey) else list(private_keys)
    signed = announcement.model_dump(mode="json")
    message = canonical_json(signed)
    signatures = [
        {"keyid": key_id(key.public_key()), "sig": base64.b64encode(key.sign(message)).decode("ascii")} for key in keys
    ]
    return canonical_json({"signed": signed, "signatures": signatures})


class _DuplicateKey(ValueError):
    pass


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of two equal keys; a signed message must mean one thing to every reader, so refuse.
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise _DuplicateKey(key)
        data[key] = value
    return data


def _depth(value: Any, limit: int) -> int:
    if limit < 0:
        return 1
    if isinstance(value, dict):
        return 1 + max((_depth(v, limit - 1) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v, limit - 1) for v in value), default=0)
    return 0


def parse_announcement(
    raw: bytes, trusted_keys: Iterable[Ed25519PublicKey], *, max_bytes: int = 64 << 10
) -> SignedAnnouncement:
    """Parse the envelope and verify its signature, then validate the signed part against the schema.

    Raises `MalformedAnnouncement` (size, encoding, JSON, duplicate keys, nesting, envelope or schema),
    `UnsignedAnnouncement` (no signature) or `BadAnnouncementSignature` (none verifies with ``trusted_keys``).
    """
    if len(raw) > max_bytes:
        raise MalformedAnnouncement(f"announcement is {len(raw)} bytes, more than the {max_bytes} allowed")
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_refuse_duplicates)
    except _DuplicateKey as exc:
        raise MalformedAnnouncement(f"announcement repeats the key {exc.args[0]!r} in one object") from exc
    except RecursionError as exc:
        raise MalformedAnnouncement("announcement is nested too deeply") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedAnnouncement(f"announcement is not valid UTF-8 JSON: {exc}") from exc
    if _depth(data, MAX_DEPTH) > MAX_DEPTH:
        raise MalformedAnnouncement(f"announcement is nested deeper than {MAX_DEPTH} levels")
    if not isinstance(data, dict) or set(data) - {"signed", "signatures"} or not isinstance(data.get("signed"), dict):
        raise MalformedAnnouncement('announcement must be {"signed": {...}, "signatures": [...]} and nothing else')
    signatures = data.get("signatures")
    if not signatures:
        raise UnsignedAnnouncement("announcement carries no signature: unsigned announcements are refused")
    if not isinstance(signatures, list) or len(signatures) > MAX_SIGNATURES:
        raise MalformedAnnouncement(f"signatures must be a list of at most {MAX_SIGNATURES} entries")
    try:
        message = canonical_json(data["signed"])
    except ValueError as exc:  # NaN / Infinity: not JSON that two readers agree on
        raise MalformedAnnouncement(f"signed part is not canonical JSON: {exc}") from exc
    keys = list(trusted_keys)
    signer: Ed25519PublicKey | None = None
    for entry in signatures:
        if not isinstance(entry, dict) or set(entry) - {"keyid", "sig"} or not isinstance(entry.get("sig"), str):
            raise MalformedAnnouncement('each signature must be {"keyid": "...", "sig": "<base64>"}')
        try:
            sig = base64.b64decode(entry["sig"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MalformedAnnouncement(f"signature is not base64: {exc}") from exc
        try:
            signer = verify_signature(message, sig, keys)
            break
        except SignatureError:
            continue
    if signer is None:
        ids = ", ".join(key_id(k) for k in keys)
        raise BadAnnouncementSignature(
            f"no signature of the announcement verifies with the {len(keys)} trusted release key(s) ({ids})"
        )
    signed = data["signed"]
    schema = signed.get("schema_version")
    if isinstance(schema, int) and not isinstance(schema, bool) and schema > SCHEMA_VERSION:
        raise MalformedAnnouncement(
            f"announcement schema_version {schema} is newer than this agent supports ({SCHEMA_VERSION}): upgrade it"
        )
    try:
        announcement = Announcement.model_validate(signed)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise MalformedAnnouncement(f"announcement is invalid: {problems}") from exc
    return SignedAnnouncement(announcement=announcement, signed_bytes=message, key_id=key_id(signer))


def version_tuple(version: str) -> tuple[int, ...]:
    """``"0.10.2"`` -> ``(0, 10, 2)``; a local/pre-release suffix (``0.2.0.dev1``, ``0.2.0+g1a2b``) is ignored."""
    parts = []
    for piece in re.split(r"[.+-]", version):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def check_announcement(
    signed: SignedAnnouncement,
    *,
    device_state: DeviceState,
    platform: str,
    agent_version: str,
    max_bundle_bytes: int,
    now: datetime | None = None,
    expected_name: str | None = None,
    last_created_at: datetime | None = None,
) -> Announcement:
    """Whether this device may act on a verified announcement; raise the specific `AnnouncementError` if not.

    ``last_created_at`` is the `created_at` of the newest announcement this device already acted on for this model
    (`UpdateStore.last_created_at`): anything older is a replay, even if validly signed and not yet expired.
    """
    ann = signed.announcement
    now = now or datetime.now(timezone.utc)
    if now >= ann.expires_at:
        raise ExpiredAnnouncement(f"announcement of {ann.describe()} expired at {ann.expires_at.isoformat()}")
    if last_created_at is not None and ann.created_at < last_created_at:
        raise ReplayedAnnouncement(
            f"announcement of {ann.describe()} was created {ann.created_at.isoformat()}, before the newest one this "
            f"device acted on ({last_created_at.isoformat()}): a replay"
        )
    if expected_name is not None and ann.name != expected_name:
        raise WrongModel(f"announcement is for model {ann.name!r}; this device runs {expected_name!r}")
    if ANY_PLATFORM not in ann.platforms and platform not in ann.platforms:
        raise WrongPlatform(f"{ann.describe()} is for {list(ann.platforms)}; this device is {platform!r}")
    if version_tuple(agent_version) < version_tuple(ann.min_agent_version):
        raise AgentTooOld(f"{ann.describe()} needs agent {ann.min_agent_version} or newer; this is {agent_version}")
    if ann.size > max_bundle_bytes:
        raise OversizeAnnouncement(
            f"{ann.describe()} is {ann.size} bytes, more than the {max_bundle_bytes} this device accepts"
        )
    bad = device_state.bad_reason(ann.name, ann.version)
    if bad is not None:
        raise KnownBadVersion(f"{ann.describe()} failed on this device before ({bad}): not retried")
    floor = device_state.floor(ann.name)
    if floor is not None and not ann.rollback and ann.version <= floor:
        raise DowngradeRefused(
            f"{ann.describe()} is not above v{floor}, the highest version this device has committed "
            "(only a signed rollback announcement may go back)"
        )
    return ann


def verify_announcement(
    raw: bytes,
    trusted_keys: Iterable[Ed25519PublicKey],
    *,
    device_state: DeviceState,
    platform: str,
    agent_version: str,
    max_bundle_bytes: int,
    max_bytes: int = 64 << 10,
    now: datetime | None = None,
    expected_name: str | None = None,
    last_created_at: datetime | None = None,
) -> SignedAnnouncement:
    """`parse_announcement` then `check_announcement`: the whole gate an inbound announcement passes."""
    signed = parse_announcement(raw, trusted_keys, max_bytes=max_bytes)
    check_announcement(
        signed,
        device_state=device_state,
        platform=platform,
        agent_version=agent_version,
        max_bundle_bytes=max_bundle_bytes,
        now=now,
        expected_name=expected_name,
        last_created_at=last_created_at,
    )
    return signed

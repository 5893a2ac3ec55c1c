"""Turn one MQTT message into storage records, or into a counted rejection (never an exception).

Every device-supplied value is checked against the contracts in `edge_agent.mqtt` (topic levels, payload schemas,
`schema_version`); the device and camera ids in a payload must equal the ones in its topic. Anything else is a
`RejectRecord` with a short reason, so a hostile or broken publisher shows up in the counters and nowhere else.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from edge_agent.mqtt.payloads import (
    SCHEMA_VERSION,
    CountsPayload,
    ModelPayload,
    StatsPayload,
    TrackEventPayload,
)
from edge_agent.mqtt.topics import RESERVED_CAMERA_IDS, check_level
from shore.records import CountRecord, InfoRecord, Record, RejectRecord, SeenRecord, StatusRecord, TrackRecord

logger = logging.getLogger(__name__)

DEVICE_STATES = frozenset({"online", "offline", "stopped"})
CAMERA_STATES = frozenset({"online", "offline", "disabled"})
_TOPIC_KEEP = 200  # characters of a rejected topic kept for diagnosis


def subscriptions(prefix: str, share_group: str | None = None) -> list[tuple[str, int]]:
    """(filter, QoS) pairs. Counts and tracks may go to a shared group; retained state never does, because MQTT 5
    does not deliver retained messages on shared subscriptions and every ingest process needs the states."""

    def shared(flt: str) -> str:
        return f"$share/{share_group}/{flt}" if share_group else flt

    return [
        (shared(f"{prefix}/+/+/counts"), 1),
        (shared(f"{prefix}/+/+/tracks"), 1),
        (f"{prefix}/+/status", 1),
        (f"{prefix}/+/+/status", 1),
        (f"{prefix}/+/model", 1),
        (f"{prefix}/+/model/update", 1),
        (shared(f"{prefix}/+/model/result"), 1),
        (f"{prefix}/+/stats", 0),
    ]


def _model_label(model: Any) -> str | None:
    if model is None:
        return None
    return f"{model.name} v{model.version} ({model.variant}, {model.backend})"


class MessageParser:
    """Parses the topics of one prefix (`{prefix}/{device_id}/…`)."""

    def __init__(self, prefix: str, max_payload_bytes: int = 65536) -> None:
        self.prefix = prefix.rstrip("/")
        self.max_payload_bytes = max_payload_bytes

    def parse(self, topic: str, payload: bytes, retained: bool, now: float) -> list[Record]:
        def reject(reason: str) -> list[Record]:
            return [RejectRecord(reason, topic[:_TOPIC_KEEP], now)]

        head = self.prefix + "/"
        if not topic.startswith(head):
            return reject("topic")
        levels = topic[len(head) :].split("/")
        if len(levels) not in (2, 3):
            return reject("topic")
        device_id = levels[0]
        try:
            check_level("device_id", device_id)
        except ValueError:
            return reject("device_id")
        if len(payload) > self.max_payload_bytes:
            return reject("oversize")
        rest = levels[1:]
        seen: list[Record] = [] if retained else [SeenRecord(device_id, None, now)]
        if rest == ["status"]:
            word = payload.decode("utf-8", "replace").strip()
            if word not in DEVICE_STATES:
                return reject("status_value")
            return [StatusRecord(device_id, None, word, now, retained)]
        if rest == ["model", "update"]:
            doc = self._json_object(payload)
            if doc is None or doc.get("schema_version") != SCHEMA_VERSION:
                return reject("payload" if doc is None else "schema_version")
            return [InfoRecord(device_id, "update", _bounded(doc), now), *seen]
        if rest == ["model", "result"]:
            doc = self._json_object(payload)
            if doc is None or doc.get("schema_version") != SCHEMA_VERSION:
                return reject("payload" if doc is None else "schema_version")
            return [InfoRecord(device_id, "result", _bounded(doc), now), *seen]
        if rest == ["model"]:
            parsed = self._validate(ModelPayload, payload, device_id)
            if isinstance(parsed, str):
                return reject(parsed)
            return [InfoRecord(device_id, "model", parsed.model_dump(mode="json", exclude_none=True), now), *seen]
        if rest == ["stats"]:
            parsed = self._validate(StatsPayload, payload, device_id)
            if isinstance(parsed, str):
                return reject(parsed)
            doc = parsed.model_dump(mode="json", exclude_none=True)
            if any(_bad_camera(c) for c in doc.get("cameras", {})):
                return reject("camera_id")
            return [InfoRecord(device_id, "stats", doc, now), *seen]
        if len(rest) != 2:
            return reject("topic")
        camera_id, leaf = rest
        if _bad_camera(camera_id):
            return reject("camera_id")
        cam_seen: list[Record] = [] if retained else [SeenRecord(device_id, camera_id, now)]
        if leaf == "status":
            word = payload.decode("utf-8", "replace").strip()
            if word not in CAMERA_STATES:
                return reject("status_value")
            return [StatusRecord(device_id, camera_id, word, now, retained)]
        if leaf == "counts":
            return self._counts(payload, device_id, camera_id, now, reject) + cam_seen
        if leaf == "tracks":
            parsed = self._validate(TrackEventPayload, payload, device_id, camera_id)
            if isinstance(parsed, str):
                return reject(parsed)
            track = TrackRecord(
                device_id,
                camera_id,
                parsed.session,
                parsed.event,
                parsed.track_id,
                parsed.first_seen.timestamp(),
                parsed.last_seen.timestamp(),
                parsed.frames,
                parsed.max_score,
            )
            return [track, *cam_seen]
        return reject("topic")

    def _counts(self, payload: bytes, device_id: str, camera_id: str, now: float, reject: Any) -> list[Record]:
        # The hot path: one Rust-side parse + validation (pydantic-core); only a failure is looked at again, to
        # name the reason.
        try:
            parsed = _CountsIn.model_validate_json(payload)
        except ValidationError:
            return reject(self._why(payload, _CountsIn))
        if parsed.schema_version != SCHEMA_VERSION:
            return reject("schema_version")
        if parsed.device_id != device_id:
            return reject("device_id")
        if parsed.camera_id != camera_id:
            return reject("camera_id")
        if parsed.aggregate is not None:
            frames = parsed.aggregate.frames
            count_sum = parsed.aggregate.count_mean * frames
            count_max = parsed.aggregate.count_max
        else:
            frames, count_sum, count_max = 1, float(parsed.count), parsed.count
        return [
            CountRecord(
                device_id=device_id,
                camera_id=camera_id,
                outbox_id=parsed.outbox_id,
                seq=parsed.seq,
                session=parsed.session,
                ts=parsed.ts.timestamp(),
                frame=parsed.frame,
                count=parsed.count,
                unique_count=parsed.unique_count,
                frames=frames,
                count_sum=count_sum,
                count_max=count_max,
                historical=parsed.historical,
                model=_model_label(parsed.model),
                received_at=now,
            )
        ]

    def _why(self, payload: bytes, model: type[BaseModel]) -> str:
        doc = self._json_object(payload)
        if doc is None:
            return "payload"
        if doc.get("schema_version") != SCHEMA_VERSION:
            return "schema_version"
        outbox_id = doc.get("outbox_id", "")
        if not isinstance(outbox_id, str) or len(outbox_id) > 64:
            return "outbox_id"
        return "schema"

    @staticmethod
    def _json_object(payload: bytes) -> dict[str, Any] | None:
        try:
            doc = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            return None
        return doc if isinstance(doc, dict) else None

    def _validate(self, model: type[BaseModel], payload: bytes, device_id: str, camera_id: str | None = None) -> Any:
        doc = self._json_object(payload)
        if doc is None:
            return "payload"
        return self._validate_doc(model, doc, device_id, camera_id)

    @staticmethod
    def _validate_doc(model: type[BaseModel], doc: dict[str, Any], device_id: str, camera_id: str | None) -> Any:
        if doc.get("schema_version") != SCHEMA_VERSION:
            return "schema_version"
        try:
            parsed = model.model_validate(doc)
        except ValidationError:
            return "schema"
        if getattr(parsed, "device_id", device_id) != device_id:
            return "device_id"
        if camera_id is not None and getattr(parsed, "camera_id", camera_id) != camera_id:
            return "camera_id"
        return parsed


class _CountsIn(CountsPayload):
    """The counts contract, except that a payload without `outbox_id` (published before the outbox had one) is
    accepted as a legacy one, outbox `""`; every other field is checked exactly as the agent's model says."""

    outbox_id: str = Field("", max_length=64, description="Random id of the device's outbox database.")


def _bad_camera(camera_id: str) -> bool:
    try:
        check_level("camera_id", camera_id)
    except ValueError:
        return True
    return camera_id in RESERVED_CAMERA_IDS


def _bounded(doc: dict[str, Any], keep: Sequence[str] | None = None) -> dict[str, Any]:
    """Keep a free-form device document small: scalar fields only, strings capped (they are shown on the page)."""
    out: dict[str, Any] = {}
    for key, value in list(doc.items())[:32]:
        if keep is not None and key not in keep:
            continue
        if isinstance(value, str):
            out[str(key)[:64]] = value[:256]
        elif isinstance(value, bool | int | float) or value is None:
            out[str(key)[:64]] = value
    return out

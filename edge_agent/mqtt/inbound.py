"""Validation of inbound MQTT messages: anything malformed is rejected, counted and logged, never raised.

Anyone with write access to the broker can publish to the agent's inbound topics, so payloads are treated as
untrusted: size is checked before decoding, then UTF-8, then the shape each topic expects. Content checks that need
more context (signatures, hashes of a model announcement) belong to the handler.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from dataclasses import dataclass
from enum import Enum

from edge_agent.mqtt.topics import Topics

logger = logging.getLogger(__name__)


class InboundKind(str, Enum):
    RESET = "reset"
    MODEL_SET = "model_set"
    FLEET_MODEL = "fleet_model"
    HA_STATUS = "ha_status"


@dataclass(frozen=True)
class Verdict:
    kind: InboundKind | None
    reason: str | None  # None: accepted
    camera_id: str | None = None
    ignore: bool = False  # valid but nothing to do (e.g. a cleared retained message)


class InboundGate:
    """Classifies and validates inbound messages for one device; keeps rejection counts."""

    def __init__(self, topics: Topics, fleet: str | None, max_bytes: int) -> None:
        self.topics = topics
        self.fleet_topic = topics.fleet_model(fleet) if fleet else None
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.rejections: Counter[str] = Counter()

    @property
    def rejected(self) -> int:
        with self._lock:
            return sum(self.rejections.values())

    def subscriptions(self, discovery: bool) -> list[tuple[str, int]]:
        subs = [(self.topics.reset_filter, 1), (self.topics.model_set, 1)]
        if self.fleet_topic:
            subs.append((self.fleet_topic, 1))
        if discovery:
            subs.append((self.topics.ha_status, 1))
        return subs

    def _kind(self, topic: str) -> tuple[InboundKind | None, str | None]:
        if topic == self.topics.model_set:
            return InboundKind.MODEL_SET, None
        if self.fleet_topic is not None and topic == self.fleet_topic:
            return InboundKind.FLEET_MODEL, None
        if topic == self.topics.ha_status:
            return InboundKind.HA_STATUS, None
        camera = self.topics.camera_of(topic)
        if camera is not None and topic.endswith("/reset"):
            return InboundKind.RESET, camera
        return None, None

    def check(self, topic: str, payload: bytes, known_cameras: frozenset[str] | set[str]) -> Verdict:
        kind, camera = self._kind(topic)
        verdict = self._check(kind, camera, payload, known_cameras)
        if verdict.reason is not None:
            self.reject(topic, payload, verdict.reason)
        return verdict

    def _check(
        self, kind: InboundKind | None, camera: str | None, payload: bytes, known_cameras: frozenset[str] | set[str]
    ) -> Verdict:
        if kind is None:
            return Verdict(None, "unexpected topic")
        if len(payload) > self.max_bytes:
            return Verdict(kind, f"oversized payload ({len(payload)} > {self.max_bytes} bytes)")
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            return Verdict(kind, "payload is not valid UTF-8")
        if kind is InboundKind.HA_STATUS:
            if text.strip() in ("online", "offline"):
                return Verdict(kind, None)
            return Verdict(kind, "Home Assistant status must be 'online' or 'offline'")
        if kind is InboundKind.RESET:
            if camera not in known_cameras:
                return Verdict(kind, f"reset for unknown camera {camera!r}", camera)
            # JSON's own whitespace only: str.strip() would also swallow control characters such as \x1c.
            if text.strip(" \t\r\n") == "":
                return Verdict(kind, None, camera)
            return Verdict(
                kind, None if _is_json_object(text) else "reset payload must be empty or a JSON object", camera
            )
        # Model announcements: a JSON object; an empty retained payload on the fleet topic means "cleared".
        if kind is InboundKind.FLEET_MODEL and payload == b"":
            return Verdict(kind, None, ignore=True)
        if not _is_json_object(text):
            return Verdict(kind, "model announcement must be a JSON object")
        return Verdict(kind, None)

    def reject(self, topic: str, payload: bytes, reason: str) -> None:
        with self._lock:
            key = reason.split(" (")[0]
            self.rejections[key] += 1
            total = sum(self.rejections.values())
        # Log the first rejections fully, then sparsely: a flood of garbage must not flood the log too.
        if total <= 20 or total % 1000 == 0:
            logger.warning(
                "MQTT: rejected inbound message on %s (%s); %d byte(s), starts %r [%d rejected so far]",
                topic,
                reason,
                len(payload),
                payload[:40],
                total,
            )


def _is_json_object(text: str) -> bool:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return False
    return isinstance(value, dict)

"""Rollout from the publisher's side: per-device update state from the broker, and waves that stop on failures.

Torch-free. What devices report (DESIGN.md, "Model updates"): the retained ``{prefix}/{device}/model/update`` (the
current update's state, version, progress, error), events on ``{prefix}/{device}/model/result`` (a transition, or
``"event": "refused"`` for an announcement that opened no update), the retained ``…/model`` (what runs) and
``…/status``.

* `fleet_status` subscribes to those topics of every device, takes the retained messages and whatever arrives
  within ``wait_s``, and folds them into one `DeviceRollout` per device.
* `staged_rollout` is AWS IoT Greengrass's lesson (roll out in waves, abort on a failure rate): the canaries get the
  announcement on their own ``…/model/set`` topics first; each must *commit* the version (survive probation) within
  ``timeout_s``; a device that fails, rolls back, refuses or says nothing in time counts as failed. Only when the
  failed share stays at or below ``max_failure_share`` is the fleet announcement published, retained, on
  ``{prefix}/fleet/{fleet}/model``; otherwise nothing more is published and the rollout stops.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.mqtt.topics import Topics
from edge_agent.update.announcement import Announcement, Rollout, sign_announcement
from export.release import connect, publish

logger = logging.getLogger(__name__)

# Update states that end an update well or badly (edge_agent.update.state.UpdateState values).
SUCCEEDED = frozenset({"committed"})
FAILED = frozenset({"failed", "rolled_back"})
_LEAVES = ("status", "model", "model/update", "model/result")


class RolloutError(ValueError):
    """A rollout that cannot start (bad device list, unreachable broker); the message names it."""


def parse_broker(broker: str) -> tuple[str, int]:
    """``host:port`` (the `--broker` option of release, retrain and rollout) as (host, port)."""
    host, _, port = broker.rpartition(":")
    if not host or not port.isdigit():
        raise RolloutError(f"--broker must be host:port, got {broker!r}")
    return host, int(port)


@dataclass
class DeviceRollout:
    """What the broker says about one device."""

    device_id: str
    status: str | None = None  # online / offline / stopped
    running: dict[str, Any] | None = None  # retained …/model
    update: dict[str, Any] | None = None  # retained …/model/update
    events: list[dict[str, Any]] = field(default_factory=list)  # …/model/result, in arrival order

    def outcome(self, name: str, version: int) -> tuple[str, str]:
        """("ok" | "failed" | "pending", why) for ``name`` v``version``."""
        for event in reversed(self.events):
            if event.get("event") == "refused" and _about(event, name, version, loose=True):
                return "failed", f"refused: {event.get('error_code') or event.get('error') or 'no reason given'}"
        update = self.update if self.update and _about(self.update, name, version) else None
        for event in reversed(self.events):
            if _about(event, name, version) and event.get("state") in SUCCEEDED | FAILED:
                update = event
                break
        if update is not None:
            state = str(update.get("state"))
            if state in SUCCEEDED:
                return "ok", state
            if state in FAILED:
                return "failed", f"{state}: {update.get('error_code') or update.get('error') or 'no reason given'}"
            return "pending", state
        return "pending", "no report yet"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _about(payload: dict[str, Any], name: str, version: int, *, loose: bool = False) -> bool:
    """Whether a report concerns ``name`` v``version``; with ``loose``, a report that names no version counts."""
    if payload.get("name") not in (None, name):
        return False
    if "version" not in payload or payload.get("version") is None:
        return loose
    return payload.get("version") == version


class _Watcher:
    """A subscriber to the device-level reports of ``prefix``, folding them into `DeviceRollout` rows."""

    def __init__(self, host: str, port: int, prefix: str, devices: Iterable[str] | None = None) -> None:
        self.prefix = prefix.rstrip("/")
        self.wanted = set(devices) if devices is not None else None
        self.devices: dict[str, DeviceRollout] = {}
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self._subscribed = threading.Event()
        self.client = connect(host, port, "rollout")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_args: self._subscribed.set()
        self.client.loop_start()
        filters = [(f"{self.prefix}/+/{leaf}", 1) for leaf in _LEAVES]
        self.client.subscribe(filters)
        if not self._subscribed.wait(10):
            self.stop()
            raise RolloutError(f"the broker {host}:{port} did not confirm the subscription to {self.prefix}/+/…")

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        head = self.prefix + "/"
        if not message.topic.startswith(head):
            return
        device, _, leaf = message.topic[len(head) :].partition("/")
        if leaf not in _LEAVES or (self.wanted is not None and device not in self.wanted):
            return
        raw = bytes(message.payload)
        with self.changed:
            row = self.devices.setdefault(device, DeviceRollout(device))
            if leaf == "status":
                row.status = raw.decode("utf-8", "replace").strip()[:32]
            else:
                try:
                    payload = json.loads(raw)
                except (UnicodeDecodeError, json.JSONDecodeError):
                    logger.warning("%s: not JSON; ignored", message.topic)
                    return
                if not isinstance(payload, dict):
                    return
                if leaf == "model":
                    row.running = payload
                elif leaf == "model/update":
                    row.update = payload
                else:
                    row.events.append(payload)
            self.changed.notify_all()

    def snapshot(self) -> dict[str, DeviceRollout]:
        with self.lock:
            return {
                k: DeviceRollout(v.device_id, v.status, v.running, v.update, list(v.events))
                for k, v in sorted(self.devices.items())
            }

    def forget_events(self, devices: Iterable[str]) -> None:
        """Drop earlier events of ``devices`` (an old refusal must not count against a new announcement)."""
        with self.lock:
            for device in devices:
                if device in self.devices:
                    self.devices[device].events.clear()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def fleet_status(
    host: str, port: int, *, prefix: str = "starfish", wait_s: float = 1.0, devices: Iterable[str] | None = None
) -> dict[str, DeviceRollout]:
    """Per-device rollout state: the retained reports plus what arrives within ``wait_s`` seconds."""
    watcher = _Watcher(host, port, prefix, devices)
    try:
        time.sleep(wait_s)
        return watcher.snapshot()
    finally:
        watcher.stop()


def status_rows(devices: dict[str, DeviceRollout]) -> list[dict[str, str]]:
    """One printable row per device (what `starfish rollout status` shows)."""
    rows = []
    for device, row in devices.items():
        running = row.running or {}
        update = row.update or {}
        last = row.events[-1] if row.events else {}
        progress = ""
        if update.get("size"):
            progress = f"{100 * float(update.get('progress') or 0) / float(update['size']):.0f} %"
        rows.append(
            {
                "device": device,
                "status": row.status or "?",
                "running": f"{running.get('name', '?')} v{running.get('version', '?')}" if running else "-",
                "update": str(update.get("state", "-")),
                "version": str(update.get("version", "-")) if update.get("version") is not None else "-",
                "progress": progress or "-",
                "error": str(update.get("error_code") or update.get("error") or "-"),
                "last_event": str(last.get("event") or last.get("state") or "-"),
            }
        )
    return rows


@dataclass
class WaveResult:
    devices: dict[str, tuple[str, str]]  # device -> (ok | failed, why)
    failure_share: float
    max_failure_share: float
    stopped: bool
    fleet_topic: str | None  # where the fleet announcement went; None when the rollout stopped

    def as_dict(self) -> dict[str, Any]:
        return {
            "devices": {d: {"outcome": o, "why": w} for d, (o, w) in self.devices.items()},
            "failure_share": self.failure_share,
            "max_failure_share": self.max_failure_share,
            "stopped": self.stopped,
            "fleet_topic": self.fleet_topic,
        }


def wave_payloads(
    announcement: Announcement, release_key: Ed25519PrivateKey, canaries: list[str], max_failure_share: float
) -> tuple[bytes, bytes]:
    """(canary wave, fleet wave) announcements of one release, each signed: the canary one targets only them."""
    canary = announcement.model_copy(
        update={"rollout": Rollout(wave=0, canary=True, devices=tuple(canaries), max_failure_share=max_failure_share)}
    )
    fleet = announcement.model_copy(update={"rollout": Rollout(wave=1, max_failure_share=max_failure_share)})
    return sign_announcement(canary, release_key), sign_announcement(fleet, release_key)


def staged_rollout(
    announcement: Announcement,
    release_key: Ed25519PrivateKey,
    *,
    host: str,
    port: int,
    canaries: list[str],
    max_failure_share: float = 0.2,
    timeout_s: float = 1800.0,
    prefix: str = "starfish",
    fleet: str = "default",
) -> WaveResult:
    """Canaries first (their ``…/model/set``), wait for their outcome, then the fleet topic unless too many failed."""
    if not canaries:
        raise RolloutError("a staged rollout needs at least one canary device")
    if not 0.0 <= max_failure_share <= 1.0:
        raise RolloutError(f"--max-failure-share must be within [0, 1], got {max_failure_share}")
    try:
        topics = {device: Topics(prefix=prefix, device_id=device) for device in canaries}
        fleet_topic = Topics(prefix=prefix, device_id=canaries[0]).fleet_model(fleet)
    except ValueError as exc:
        raise RolloutError(str(exc)) from exc
    canary_payload, fleet_payload = wave_payloads(announcement, release_key, canaries, max_failure_share)
    name, version = announcement.name, announcement.version
    watcher = _Watcher(host, port, prefix, canaries)
    try:
        time.sleep(0.2)  # the retained reports arrive first; events before this announcement are not its outcome
        watcher.forget_events(canaries)
        for topic in topics.values():
            publish(canary_payload, host=host, port=port, topic=topic.model_set, retain=False)
        logger.info("canary wave: %s v%d sent to %s; waiting up to %.0f s", name, version, canaries, timeout_s)
        deadline = time.monotonic() + timeout_s
        outcomes: dict[str, tuple[str, str]] = {}
        with watcher.changed:
            while True:
                outcomes = {d: watcher.devices.get(d, DeviceRollout(d)).outcome(name, version) for d in canaries}
                if all(o != "pending" for o, _ in outcomes.values()) or time.monotonic() >= deadline:
                    break
                watcher.changed.wait(min(1.0, max(0.01, deadline - time.monotonic())))
    finally:
        watcher.stop()
    final = {
        d: (o, w) if o != "pending" else ("failed", f"no outcome within {timeout_s:.0f} s (last: {w})")
        for d, (o, w) in outcomes.items()
    }
    failures = sum(o == "failed" for o, _ in final.values())
    share = failures / len(canaries)
    for device, (outcome, why) in final.items():
        (logger.info if outcome == "ok" else logger.warning)("canary %s: %s (%s)", device, outcome, why)
    if share > max_failure_share:
        logger.error(
            "rollout of %s v%d stopped: %d of %d canaries failed (%.0f %% > %.0f %%)",
            name,
            version,
            failures,
            len(canaries),
            100 * share,
            100 * max_failure_share,
        )
        return WaveResult(final, share, max_failure_share, True, None)
    publish(fleet_payload, host=host, port=port, topic=fleet_topic)
    return WaveResult(final, share, max_failure_share, False, fleet_topic)

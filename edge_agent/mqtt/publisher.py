"""`AgentPublisher`: everything the agent sends to and receives from the broker (topics: docs/mqtt.md).

Data path for counts and track events (store-and-forward):

    publish_counts() --queue--> OutboxWriter --group commit--> Outbox (SQLite WAL)
        --sender thread, bounded window--> paho --successful PUBACK--> delete (through the writer)

* The outbox is the source of truth. The hot path only queues: the writer thread commits everything queued in one
  transaction about every 50 ms (`OutboxWriter`), so a frame costs no fsync of its own. Counts and track events
  that cannot be stored (disk full) are counted (`not_stored` in `stats`) and logged; detection goes on.
* The sender hands paho at most `inflight_window` unacknowledged messages and only while connected, so paho's own
  queue stays small during an outage; everything else waits on disk.
* paho re-sends the messages it holds after a reconnect (same mid); the sender then continues from its cursor. A
  message acknowledged by the broker is deleted; one the process never saw acknowledged is replayed after a restart,
  so a subscriber may see a duplicate (deduplicate by `(device_id, outbox_id, seq)`) but never misses one.
* A PUBACK with a failure reason (MQTT 5: not authorised, quota exceeded, ...) does not delete the row: it stays in
  the outbox and is re-sent after a backoff (1 s doubling up to `reconnect_max_delay_s`), counted in
  `rejected_by_broker` and logged. Only the documented size/age bounds ever drop a count.
* Messages already waiting in the outbox when a connection (re)starts are sent with `historical: true`.

Connect sequence: `status=online` (in the CONNACK callback, so it precedes anything paho re-sends), then, once the
subscriptions are acknowledged, from the sender thread: `model`, `model/update`, camera statuses, Home Assistant
discovery, latest count and unique values, then the outbox backlog in order, then live messages. All retained state
goes through the sender thread, so a value changed during an outage is published after any stale copy paho re-sends.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from edge_agent.mqtt.config import MqttConfig
from edge_agent.mqtt.discovery import discovery_messages
from edge_agent.mqtt.inbound import InboundGate, InboundKind
from edge_agent.mqtt.payloads import (
    Aggregate,
    CameraState,
    CountsInput,
    CountsPayload,
    ModelInfo,
    ModelPayload,
    ModelRef,
    StatsInput,
    StatsPayload,
    TrackEventInput,
    TrackEventPayload,
    UpdateResultPayload,
    UpdateStateInput,
    UpdateStatePayload,
)
from edge_agent.mqtt.topics import Topics, check_camera_id
from edge_agent.mqtt.transport import MqttTransport, TransportEvents, Will
from edge_agent.outbox import Outbox, OutboxError, PendingMessage
from edge_agent.outbox_writer import OutboxWriter
from edge_agent.ratelimit import LogLimiter

logger = logging.getLogger(__name__)

CommandHandler = Callable[[str, bytes], None]

_CAMERA_STATES = ("online", "offline", "disabled")
_AGE_CHECK_EVERY_S = 5.0
_READ_BATCH = 500
# Slots of the broker's receive window kept free for QoS 1 messages sent outside the sender thread (`status` on
# connect).
_RESERVED_SLOTS = 2
# Home Assistant announces `online` once per start; a flood of them (a loop, a misbehaving bridge) is coalesced into
# one discovery re-publish per this window.
_HA_COALESCE_S = 1.0
_RETRY_MIN_S = 1.0


def client_id_for(device_id: str) -> str:
    """MQTT client id of a device; a broker disconnects the older of two clients with the same id."""
    return f"starfish-{device_id}"


def _mark_historical(payload: bytes) -> bytes:
    # Stored payloads are compact pydantic JSON with exactly one top-level `"historical":false` (nested models have
    # no such field), so a byte replacement is exact and ~20x cheaper than a JSON round trip during replay.
    if payload.count(b'"historical":false') == 1:
        return payload.replace(b'"historical":false', b'"historical":true')
    doc = json.loads(payload)
    doc["historical"] = True
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass
class _Window:
    """One camera's open aggregation window (counts mode `aggregate`)."""

    opened: float
    first: CountsInput
    last: CountsInput
    frames: int
    count_min: int
    count_max: int
    count_sum: int

    def add(self, item: CountsInput) -> None:
        self.last = item
        self.frames += 1
        self.count_min = min(self.count_min, item.count)
        self.count_max = max(self.count_max, item.count)
        self.count_sum += item.count


class AgentPublisher:
    """Publishes counts, tracks, stats and state for one device; receives its commands.

    Thread-safe: the agent's threads may call the publish methods concurrently.
    """

    def __init__(
        self, cfg: MqttConfig, device_id: str, outbox: Outbox, software_version: str, commit_interval_s: float = 0.05
    ) -> None:
        self.cfg = cfg
        self.device_id = device_id
        self.outbox = outbox
        self.software_version = software_version
        self.topics = Topics(cfg.topic_prefix, device_id, cfg.discovery.prefix)
        self._gate = InboundGate(self.topics, cfg.fleet, cfg.max_inbound_bytes)
        events = TransportEvents(
            on_connected=self._on_connected,
            on_ready=self._on_ready,
            on_disconnected=self._on_disconnected,
            on_message=self._on_message,
            on_ack=self._on_ack,
            subscriptions=self._gate.subscriptions(cfg.discovery.enabled),
        )
        self._transport = MqttTransport(cfg, client_id_for(device_id), Will(self.topics.status, "offline"), events)
        self._writer = OutboxWriter(outbox, on_commit=self._on_commit, linger_s=commit_interval_s)

        # Shared state, guarded by _lock (never held while calling into paho).
        self._lock = threading.Lock()
        self._cameras: dict[str, str] = {}
        self._model: ModelInfo | None = None
        self._model_ts = datetime.now(timezone.utc)
        self._update_state: str | None = None  # retained `…/model/update` JSON, None until the agent sets it
        self._latest_values: dict[str, int] = {}  # retained live-value topic -> latest value
        self._dirty: set[str] = set()
        self._ready_generation = 0
        self._window_cap = cfg.inflight_window
        self._windows: dict[str, _Window] = {}

        # Sender-thread state.
        self._acks: deque[tuple[int, bool, str]] = deque()  # appended by the network thread, drained by the sender
        self._inflight: dict[int, int] = {}  # paho mid -> outbox row id
        self._state_inflight: set[int] = set()  # mids of unacknowledged retained-state messages
        self._state_pending: deque[tuple[str, bytes | str | None, int]] = deque()  # (topic, payload, qos), retained
        self._cursor = 0  # highest outbox id handed to paho
        self._backlog_end = 0  # outbox ids <= this were waiting when the current connection became ready
        self._handled_generation = 0
        self._ready = False
        self.rejected_by_broker = 0  # negative PUBACKs for stored messages (each such row stays and is retried)
        self.refused_waiting = 0  # refused rows waiting for their retry
        self._refused_min: int | None = None  # lowest refused row id not yet re-sent
        self._retry_at = 0.0
        self._retry_delay = _RETRY_MIN_S
        self._last_refusal = 0.0
        self._rewound_until = 0  # after a retry rewind: rows <= this that are in flight are skipped
        self._refusal_log = LogLimiter(10.0)
        self._ha_due: float | None = None
        self._published_values: dict[str, int] = {}
        # Serialises each live value's read-and-publish (frame loop and connect re-send); paho never takes it.
        self._values_lock = threading.Lock()

        self._wake = threading.Event()
        self._stop_event = threading.Event()
        self._sender: threading.Thread | None = None
        self._handlers: list[CommandHandler] = []
        self._inbound: queue.Queue[tuple[str, bytes] | None] = queue.Queue(maxsize=256)
        self._inbound_thread: threading.Thread | None = None
        self.handler_errors = 0
        self._started_at = 0.0
        self._session = 0
        self._stats_provider: Callable[[], dict[str, Any]] | None = None
        self._last_stats = 0.0

    # -- public state ---------------------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._transport.connected

    @property
    def outbox_depth(self) -> int:
        return self.outbox.depth

    @property
    def dropped_by_policy(self) -> int:
        return self.outbox.dropped_total

    @property
    def reconnects(self) -> int:
        return self._transport.reconnects

    @property
    def inbound_rejected(self) -> int:
        return self._gate.rejected

    @property
    def outbox_id(self) -> str:
        return self.outbox.outbox_id

    def not_stored(self) -> dict[str, int]:
        """Counts / track events that could not be stored (disk full, I/O error) since start, by kind."""
        return self._writer.not_stored()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every message queued so far is committed to the outbox (or counted as not stored)."""
        return self._writer.flush(timeout)

    @property
    def session(self) -> int:
        return self._session

    @property
    def last_error(self) -> str | None:
        """Why the broker is not connected (refused connect, unreachable), when known."""
        return self._transport.last_error

    def wait_connected(self, timeout: float) -> bool:
        return self._transport.wait_connected(timeout)

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Begin a new session and connect in the background (returns at once; messages buffer meanwhile)."""
        if self._sender is not None or self._stop_event.is_set():
            raise RuntimeError("AgentPublisher.start() may be called once per instance")
        self._session = self.outbox.start_session()
        self._started_at = time.monotonic()
        self._writer.start()
        self._sender = threading.Thread(target=self._sender_main, name="mqtt-sender", daemon=True)
        self._inbound_thread = threading.Thread(target=self._inbound_main, name="mqtt-inbound", daemon=True)
        self._sender.start()
        self._inbound_thread.start()
        self._transport.start()
        logger.info(
            "MQTT publisher for %s: session %d, outbox depth %d", self.device_id, self._session, self.outbox.depth
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Flush what the broker takes within `timeout`, publish `stopped`, disconnect cleanly.

        Whatever is not acknowledged by then stays in the outbox for the next start. The outbox is not closed (it
        belongs to the caller).
        """
        if self._sender is None:
            return
        deadline = time.monotonic() + timeout
        reserve = min(1.0, timeout * 0.3)  # keep time for `stopped` and the disconnect
        try:
            self._flush_windows(force=True)
        except Exception:  # noqa: BLE001 - a failed last window must not keep `stopped` from being published
            logger.exception("MQTT: flushing the open aggregation windows failed")
        self._writer.flush(max(0.1, (deadline - time.monotonic()) * 0.5))
        while time.monotonic() < deadline - reserve and self.connected:
            if self.outbox.depth == 0 and not self._inflight:
                break
            self._wake.set()
            time.sleep(0.02)
        self._stop_event.set()
        self._wake.set()
        self._sender.join(timeout=max(0.1, deadline - time.monotonic()))
        # Camera statuses are retained: say `offline` for each before the device says `stopped`, so no camera stays
        # `online` after a clean stop (after a kill, consumers read camera status under the device's status).
        with self._lock:
            final = [
                (self.topics.camera_status(cam), "offline")
                for cam, state in sorted(self._cameras.items())
                if state == "online"
            ]
        final.append((self.topics.status, "stopped"))
        self._transport.stop(final=final, timeout=max(0.2, deadline - time.monotonic()))
        self._writer.stop(timeout=max(0.2, deadline - time.monotonic()))
        self._drain_acks()  # acknowledgements that arrived while `stopped` was in flight (deleted directly)
        self._inbound.put(None)
        if self._inbound_thread is not None:
            self._inbound_thread.join(timeout=1.0)
        self._sender = None
        logger.info("MQTT publisher stopped; %d message(s) left in the outbox", self.outbox.depth)

    # -- state topics ----------------------------------------------------------------------------------------------
    def set_model_info(self, info: dict[str, Any]) -> None:
        """Record the running model (retained `…/model`), published now if connected, else on connect."""
        model = ModelInfo.model_validate(info)
        with self._lock:
            self._model = model
            self._model_ts = datetime.now(timezone.utc)
            self._dirty.add("model")
        self._wake.set()

    def set_camera_status(self, camera_id: str, status: CameraState) -> None:
        """Record a camera's state (retained `…/{camera_id}/status`): online, offline or disabled."""
        check_camera_id(camera_id)
        if status not in _CAMERA_STATES:
            raise ValueError(f"camera status must be one of {_CAMERA_STATES}, got {status!r}")
        with self._lock:
            new = camera_id not in self._cameras
            if self._cameras.get(camera_id) == status and not new:
                return
            self._cameras[camera_id] = status
            self._dirty.add(f"cam:{camera_id}")
            if new:
                self._dirty.add("discovery")
        self._wake.set()

    def publish_count_value(self, camera_id: str, count: int, unique_count: int | None = None) -> None:
        """Retained QoS 0 plain numbers: the frame's count on `…/{camera_id}/count` and, when given, the unique
        count on `…/{camera_id}/unique`. Each is published only when it changed, and the latest values are re-sent
        on every connect.

        These are the live values (Home Assistant's sensors read them): only the agent's frame loop calls this, so
        counts replayed from the outbox after an outage never move them back.
        """
        values = [(self.topics.count_value(camera_id), int(count))]
        if unique_count is not None:
            values.append((self.topics.unique_value(camera_id), int(unique_count)))
        for _, value in values:
            if value < 0:
                raise ValueError(f"count values must be >= 0, got {value}")
        changed: list[tuple[str, int]] = []
        with self._values_lock:
            with self._lock:
                ready = self._ready
                for topic, value in values:
                    self._latest_values[topic] = value
                    # A retained message per frame with the same number is wasted traffic (and, for Home Assistant,
                    # a state write per frame): publish changes only.
                    if ready and self._published_values.get(topic) != value:
                        self._published_values[topic] = value
                        changed.append((topic, value))
            if self.connected:
                for topic, value in changed:
                    self._transport.publish(topic, str(value), qos=0, retain=True)

    def _resend_value(self, topic: str) -> None:
        """Re-send a live value on connect: read at send time, under the same lock as the frame loop's publishes,
        so a stale snapshot can never overwrite a newer retained value."""
        with self._values_lock:
            with self._lock:
                value = self._latest_values.get(topic)
                if value is None or self._published_values.get(topic) == value:
                    return  # the frame loop sent this very value on this connection already
                self._published_values[topic] = value
            self._transport.publish(topic, str(value), qos=0, retain=True)

    # -- stored messages -------------------------------------------------------------------------------------------
    def publish_counts(self, camera_id: str, payload: dict[str, Any], *, wait: bool = True) -> int | None:
        """Queue one frame's counts for the outbox and the broker.

        `payload`: `ts`, `frame`, `count`, `unique_count`, optional `detections`, optional `model` (defaults to the
        running model). With `wait` (the default) it returns once the message is committed, with its `seq`, and
        raises `OutboxError` if it could not be stored; without `wait` (the agent's hot path) it returns None at
        once and the writer commits it with the next group (failures are counted in `not_stored()`). In
        `aggregate` mode it returns None until a window closes.
        """
        if self._session == 0:
            raise RuntimeError("AgentPublisher.start() must be called before publishing")
        check_camera_id(camera_id)
        item = CountsInput.model_validate(payload)
        self._register_camera(camera_id)
        if self.cfg.counts.mode == "aggregate":
            return self._aggregate(camera_id, item, wait)
        if not self.cfg.counts.include_detections and item.detections is not None:
            item = item.model_copy(update={"detections": None})
        return self._store_counts(camera_id, item, None, wait)

    def publish_track_event(self, camera_id: str, payload: dict[str, Any], *, wait: bool = True) -> None:
        """Queue a track `new` / `end` event for the outbox (`…/{camera_id}/tracks`, no seq); `wait` as counts."""
        if self._session == 0:
            raise RuntimeError("AgentPublisher.start() must be called before publishing")
        item = TrackEventInput.model_validate(payload)
        topic = self.topics.tracks(camera_id)
        doc = (
            TrackEventPayload(**item.model_dump(), device_id=self.device_id, camera_id=camera_id, session=self._session)
            .model_dump_json(exclude_none=True)
            .encode()
        )
        future = self._writer.submit(PendingMessage(topic, lambda _seq: doc, sequenced=False), "tracks", wait)
        if future is not None:
            future.result()

    def _store_counts(self, camera_id: str, item: CountsInput, aggregate: Aggregate | None, wait: bool) -> int | None:
        fields = item.model_dump(exclude={"model"})
        model_ref = item.model or self._model_ref()
        session, outbox_id = self._session, self.outbox.outbox_id

        def build(seq: int | None) -> bytes:  # runs on the writer thread, once the seq is assigned
            doc = CountsPayload(
                **fields,
                model=model_ref,
                device_id=self.device_id,
                camera_id=camera_id,
                session=session,
                outbox_id=outbox_id,
                seq=seq or 0,
                historical=False,
                aggregate=aggregate,
            )
            return doc.model_dump_json(exclude_none=True).encode()

        future = self._writer.submit(PendingMessage(self.topics.counts(camera_id), build), "counts", wait)
        if future is None:
            return None
        return int(future.result().seq or 0)

    def _on_commit(self) -> None:
        self._wake.set()

    def _model_ref(self) -> ModelRef | None:
        with self._lock:
            model = self._model
        if model is None:
            return None
        return ModelRef(name=model.name, version=model.version, variant=model.variant, backend=model.backend)

    def _register_camera(self, camera_id: str) -> None:
        with self._lock:
            if camera_id in self._cameras:
                return
            self._cameras[camera_id] = "online"
            self._dirty.update({f"cam:{camera_id}", "discovery"})

    # -- aggregation -------------------------------------------------------------------------------------------
    def _aggregate(self, camera_id: str, item: CountsInput, wait: bool) -> int | None:
        now = time.monotonic()
        with self._lock:
            window = self._windows.get(camera_id)
            if window is None:
                self._windows[camera_id] = _Window(now, item, item, 1, item.count, item.count, item.count)
                return None
            window.add(item)
            if now - window.opened < self.cfg.counts.interval_s:
                return None
            del self._windows[camera_id]
        return self._emit_window(camera_id, window, wait)

    def _emit_window(self, camera_id: str, window: _Window, wait: bool = False) -> int | None:
        summary = Aggregate(
            frames=window.frames,
            first_ts=window.first.ts,
            first_frame=window.first.frame,
            count_min=window.count_min,
            count_max=window.count_max,
            count_mean=window.count_sum / window.frames,
        )
        # `count` of an aggregate is the most starfish seen at once in the window.
        item = window.last.model_copy(update={"count": window.count_max, "detections": None})
        return self._store_counts(camera_id, item, summary, wait)

    def _flush_windows(self, force: bool) -> None:
        now = time.monotonic()
        with self._lock:
            due = [cam for cam, w in self._windows.items() if force or now - w.opened >= self.cfg.counts.interval_s]
            windows = [(cam, self._windows.pop(cam)) for cam in due]
        for cam, window in windows:
            try:
                self._emit_window(cam, window)
            except OutboxError as exc:  # counted by the writer already
                logger.debug("aggregation window of %s not stored: %s", cam, exc)

    # -- QoS 0 / direct messages -----------------------------------------------------------------------------------
    def publish_stats(self, payload: dict[str, Any]) -> bool:
        """Publish `…/stats` (QoS 0) with the publisher's own figures added; False when not connected (dropped)."""
        item = StatsInput.model_validate(payload)
        if not self.connected:
            return False
        doc = StatsPayload(
            **item.model_dump(),
            device_id=self.device_id,
            ts=datetime.now(timezone.utc),
            session=self._session,
            uptime_s=round(time.monotonic() - self._started_at, 3),
            software_version=self.software_version,
            mqtt_reconnects=self.reconnects,
            outbox_depth=self.outbox_depth,
            dropped_by_policy=self.dropped_by_policy,
            inbound_rejected=self.inbound_rejected,
            outbox_id=self.outbox.outbox_id,
            rejected_by_broker=self.rejected_by_broker,
            refused_waiting=self.refused_waiting,
            handler_errors=self.handler_errors,
            not_stored=self.not_stored(),
            session_takeovers=self._transport.takeovers,
        )
        return self._transport.publish(self.topics.stats, doc.model_dump_json(exclude_none=True), qos=0) is not None

    def set_stats_provider(self, provider: Callable[[], dict[str, Any]] | None) -> None:
        """Let the publisher call `provider()` every `stats_interval_s` and publish the result as `stats`.

        The alternative to calling `publish_stats` from the agent's own timer. A failing provider is logged.
        """
        self._stats_provider = provider

    def _maybe_publish_stats(self, now: float) -> None:
        provider = self._stats_provider
        if provider is None or now - self._last_stats < self.cfg.stats_interval_s:
            return
        self._last_stats = now
        try:
            self.publish_stats(provider())
        except Exception:  # noqa: BLE001 - a stats bug must not stop the sender
            logger.exception("MQTT: stats provider failed")

    def set_update_state(self, state: dict[str, Any]) -> None:
        """Record the update state (retained `…/model/update`), published now if connected, else on connect."""
        doc = UpdateStateInput.model_validate(state)
        payload = UpdateStatePayload(**doc.model_dump(), device_id=self.device_id, ts=datetime.now(timezone.utc))
        with self._lock:
            self._update_state = payload.model_dump_json(exclude_none=True)
            self._dirty.add("update")
        self._wake.set()

    def publish_update_event(self, event: dict[str, Any], *, wait: bool = False) -> None:
        """Queue an update event for `…/model/result` through the outbox (QoS 1, no seq), so it survives an
        outage or a restart like counts do. ``event``: the `UpdateResultPayload` fields without device_id/ts."""
        if self._session == 0:
            raise RuntimeError("AgentPublisher.start() must be called before publishing")
        doc = (
            UpdateResultPayload(**event, device_id=self.device_id, ts=datetime.now(timezone.utc))
            .model_dump_json(exclude_none=True)
            .encode()
        )
        topic = self.topics.model_result
        future = self._writer.submit(PendingMessage(topic, lambda _seq: doc, sequenced=False), "updates", wait)
        if future is not None:
            future.result()

    # -- inbound ------------------------------------------------------------------------------------------------
    def on_command(self, handler: CommandHandler) -> None:
        """Register `handler(topic, payload)` for validated inbound commands (camera reset, model announcements).

        Handlers run on the publisher's inbound thread, one message at a time; an exception is logged and counted.
        """
        self._handlers.append(handler)

    def _on_message(self, topic: str, payload: bytes) -> None:
        with self._lock:
            cameras = frozenset(self._cameras)
        verdict = self._gate.check(topic, payload, cameras)
        if verdict.reason is not None or verdict.ignore:
            return
        if verdict.kind is InboundKind.HA_STATUS:
            if payload.strip() == b"online":
                with self._lock:
                    first = self._ha_due is None
                    if first:  # later `online`s inside the window ride on this one re-publish
                        self._ha_due = time.monotonic() + _HA_COALESCE_S
                if first:
                    logger.info("MQTT: Home Assistant is online; re-sending discovery in %.0f s", _HA_COALESCE_S)
                self._wake.set()
            return
        try:
            self._inbound.put_nowait((topic, payload))
        except queue.Full:
            self._gate.reject(topic, payload, "inbound queue full")

    def _inbound_main(self) -> None:
        while True:
            item = self._inbound.get()
            if item is None:
                return
            topic, payload = item
            for handler in list(self._handlers):
                try:
                    handler(topic, payload)
                except Exception:  # noqa: BLE001 - a handler bug must not stop command handling
                    self.handler_errors += 1
                    logger.exception("MQTT: command handler failed for %s", topic)

    # -- transport events (network thread) -------------------------------------------------------------------
    def _on_connected(self, receive_maximum: int | None) -> None:
        # Published inside the CONNACK callback so it precedes the messages paho re-sends after it.
        self._transport.publish(self.topics.status, "online", qos=1, retain=True)
        with self._lock:
            self._window_cap = min(self.cfg.inflight_window, receive_maximum or self.cfg.inflight_window)

    def _on_ready(self) -> None:
        with self._lock:
            self._ready_generation += 1
        self._wake.set()

    def _on_disconnected(self, _reason: str) -> None:
        with self._lock:
            self._ready = False
        self._wake.set()

    def _on_ack(self, mid: int, accepted: bool, reason: str) -> None:
        self._acks.append((mid, accepted, reason))
        self._wake.set()

    # -- sender thread ------------------------------------------------------------------------------------------
    def _sender_main(self) -> None:
        last_age_check = 0.0
        while not self._stop_event.is_set():
            self._wake.wait(0.25)
            self._wake.clear()
            try:
                self._drain_acks()
                now = time.monotonic()
                if now - last_age_check >= _AGE_CHECK_EVERY_S:
                    last_age_check = now
                    self.outbox.enforce_age()
                if self.cfg.counts.mode == "aggregate":
                    self._flush_windows(force=False)
                self._maybe_publish_stats(now)
                self._coalesced_discovery(now)
                self._maybe_retry_refused(now)
                if not self.connected:
                    continue
                if not self._become_ready():
                    continue
                self._publish_dirty_state()
                self._hand_over()
            except Exception:  # noqa: BLE001 - the sender must survive (e.g. a full disk); messages stay stored
                logger.exception("MQTT sender: unexpected error; retrying")
                time.sleep(0.5)

    def _become_ready(self) -> bool:
        with self._lock:
            generation = self._ready_generation
            if generation != self._handled_generation:
                self._handled_generation = generation
                # Everything stored up to now is backlog: it goes out marked historical, after the state messages.
                self._backlog_end = self.outbox.max_id()
                self._state_pending.clear()  # rebuilt below from the current state
                self._published_values.clear()  # nothing of it is on this connection yet (see `_resend_value`)
                self._dirty.update({"model", "update", "discovery", "counts"} | {f"cam:{c}" for c in self._cameras})
                self._ready = True
                logger.info("MQTT: session ready; %d message(s) in the backlog", self.outbox.depth)
            return self._ready

    def _publish_dirty_state(self) -> None:
        """Queue the changed retained state (model, cameras, discovery, count values) and send what fits."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            model, model_ts = self._model, self._model_ts
            update_state = self._update_state
            cameras = dict(self._cameras)
            value_topics = sorted(self._latest_values)
        pending = self._state_pending
        if "model" in dirty and model is not None:
            doc = ModelPayload(**model.model_dump(), device_id=self.device_id, ts=model_ts)
            pending.append((self.topics.model, doc.model_dump_json(exclude_none=True), 1))
        if "update" in dirty and update_state is not None:
            pending.append((self.topics.model_update, update_state, 1))
        for cam, status in sorted(cameras.items()):
            if f"cam:{cam}" in dirty:
                pending.append((self.topics.camera_status(cam), status, 1))
        if "discovery" in dirty and self.cfg.discovery.enabled:
            pending.extend(
                (topic, doc_bytes, 1)
                for topic, doc_bytes in discovery_messages(self.topics, cameras, self.software_version)
            )
        if "counts" in dirty:
            # Payload None: the value current when it is sent (see `_resend_value`).
            pending.extend((topic, None, 0) for topic in value_topics)
        while pending:
            topic, payload, qos = pending[0]
            if qos and self._room() <= 0:
                break  # the rest goes out as acknowledgements free the broker's receive window
            pending.popleft()
            if payload is None:
                self._resend_value(topic)
                continue
            mid = self._transport.publish(topic, payload, qos=qos, retain=True)
            if qos and mid is not None:
                self._state_inflight.add(mid)

    def _room(self) -> int:
        with self._lock:
            cap = self._window_cap
        cap = max(1, cap - _RESERVED_SLOTS) if cap > _RESERVED_SLOTS else cap
        return cap - len(self._inflight) - len(self._state_inflight)

    def _hand_over(self) -> None:
        if self._state_pending:
            return  # retained state first (connect order), then the backlog
        room = self._room()
        if room <= 0:
            return
        records = self.outbox.read_after(self._cursor, min(room, _READ_BATCH))
        in_flight = set(self._inflight.values()) if self._cursor < self._rewound_until else set()
        for record in records:
            if record.id in in_flight:  # re-reading after a retry rewind: this one is still on its way
                self._cursor = record.id
                continue
            payload = record.payload if record.id > self._backlog_end else _mark_historical(record.payload)
            mid = self._transport.publish(record.topic, payload, qos=1)
            if mid is None:
                break
            self._inflight[mid] = record.id
            self._cursor = record.id
        if len(records) == min(room, _READ_BATCH):
            self._wake.set()  # more waiting; come straight back after the acks are drained

    def _drain_acks(self) -> None:
        done: list[int] = []
        now = time.monotonic()
        while self._acks:
            mid, accepted, reason = self._acks.popleft()
            row_id = self._inflight.pop(mid, None)
            if row_id is None:
                if mid in self._state_inflight and not accepted:
                    logger.warning("MQTT: broker refused a retained state message: %s", reason)
                self._state_inflight.discard(mid)  # a state message: nothing stored for it
                continue
            if accepted:
                done.append(row_id)
                continue
            self._refused(row_id, reason, now)
        if done:
            if self._writer.running:
                self._writer.delete(done)
            else:
                self.outbox.delete(done)

    def _refused(self, row_id: int, reason: str, now: float) -> None:
        """A negative PUBACK (ACL denial, quota): keep the row and re-send it after a backoff."""
        self.rejected_by_broker += 1
        self.refused_waiting += 1
        if now - self._last_refusal > 4 * self.cfg.reconnect_max_delay_s:
            self._retry_delay = _RETRY_MIN_S  # a new episode: start the backoff again
        self._last_refusal = now
        if self._refused_min is None or row_id < self._refused_min:
            self._refused_min = row_id
        if self._retry_at <= now:
            self._retry_at = now + self._retry_delay
        log, suppressed = self._refusal_log.allow("refused", now)
        if log:
            more = f" (+{suppressed} more since the last report)" if suppressed else ""
            logger.warning(
                "MQTT: broker refused stored message %d (%s)%s; it stays in the outbox and is retried in %.0f s "
                "[%d refused so far]",
                row_id,
                reason,
                more,
                self._retry_at - now,
                self.rejected_by_broker,
            )

    def _maybe_retry_refused(self, now: float) -> None:
        if self._refused_min is None or now < self._retry_at or not self.connected:
            return
        # Deletions of rows acknowledged meanwhile must be committed first, or the rewind would re-send them.
        self._writer.flush(1.0)
        self._drain_acks()
        first = self._refused_min
        if first is None:
            return
        self._refused_min = None
        logger.info("MQTT: re-sending %d refused message(s) from outbox row %d", self.refused_waiting, first)
        self.refused_waiting = 0
        self._backlog_end = max(self._backlog_end, self._cursor)  # what is re-sent goes out as historical
        self._rewound_until = max(self._rewound_until, self._cursor)
        self._cursor = min(self._cursor, first - 1)
        self._retry_delay = min(self._retry_delay * 2, max(_RETRY_MIN_S, self.cfg.reconnect_max_delay_s))
        self._wake.set()

    def _coalesced_discovery(self, now: float) -> None:
        with self._lock:
            if self._ha_due is None or now < self._ha_due:
                return
            self._ha_due = None
            self._dirty.add("discovery")

"""MQTT ingest: a persistent MQTT 5 session at QoS 1, each message acknowledged only after its commit.

    paho network thread --on_message--> queue --writer thread--> parse --> storage.write (one transaction)
                                                                  \\--> client.ack(mid) for each, in order

* `manual_ack=True`: paho does not PUBACK on its own. A message we have not committed stays unacknowledged in the
  broker's session (kept `session_expiry_s`, across a broker restart with persistence, across our own kill -9) and
  is re-sent when we reconnect; one committed but not yet acknowledged comes back too and is dropped as a duplicate
  by the `(device_id, outbox_id, seq)` key. So nothing is lost and nothing counted twice.
* Packet ids are per connection: a message received on an earlier connection is never acknowledged on a later one
  (its id may by then name a different message); the broker re-sends it instead.
* A failing database keeps the batch and retries it; acknowledgements wait, so the broker holds the rest.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from shore.config import IngestConfig
from shore.parse import MessageParser, subscriptions
from shore.records import Record, RejectRecord
from shore.storage import Storage

logger = logging.getLogger(__name__)


class _OutageNoise(logging.Filter):
    """paho logs an ERROR on every failed reconnect attempt; the outage is reported once, by us."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


_PAHO_LOGGER = logging.getLogger("shore.paho")
_PAHO_LOGGER.addFilter(_OutageNoise())


@dataclass(frozen=True)
class _Message:
    generation: int
    mid: int
    qos: int
    topic: str
    payload: bytes
    retained: bool
    at: float


@dataclass
class IngestStats:
    received: int = 0
    committed: int = 0
    new_counts: int = 0
    duplicate_counts: int = 0
    rejected: int = 0
    batches: int = 0
    write_failures: int = 0
    connects: int = 0
    connected: bool = False
    last_error: str | None = None
    rejected_by_reason: dict[str, int] = field(default_factory=dict)


class Ingest:
    """Subscribes to the fleet and writes what arrives to `storage`."""

    def __init__(self, cfg: IngestConfig, storage: Storage) -> None:
        self.cfg = cfg
        self.storage = storage
        self.parser = MessageParser(cfg.topic_prefix, cfg.max_payload_bytes)
        self.stats = IngestStats()
        self._queue: queue.Queue[_Message] = queue.Queue()
        self._generation = 0
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._writer: threading.Thread | None = None
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=True,
            reconnect_on_failure=True,
        )
        self._client.reconnect_delay_set(0.2, cfg.reconnect_max_delay_s)  # type: ignore[arg-type]
        if cfg.username is not None:
            self._client.username_pw_set(cfg.username, cfg.resolved_password())
        if cfg.tls is not None:
            self._client.tls_set(
                ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
                certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
            self._client.tls_insecure_set(cfg.tls.insecure)
        self._client.enable_logger(_PAHO_LOGGER)
        self._client.suppress_exceptions = True
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        props.ReceiveMaximum = self.cfg.receive_maximum
        logger.info("shore ingest: connecting to %s:%d as %s", self.cfg.host, self.cfg.port, self.cfg.client_id)
        # clean_start=False resumes the session: what arrived while we were away is waiting for us.
        self._client.connect_async(
            self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s, clean_start=False, properties=props
        )
        self._client.loop_start()
        self._writer = threading.Thread(target=self._writer_main, name="shore-writer", daemon=True)
        self._writer.start()

    def wait_subscribed(self, timeout: float) -> bool:
        return self._subscribed.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Commit and acknowledge what is queued, then disconnect (the session stays on the broker)."""
        self._stop.set()
        if self._writer is not None:
            self._writer.join(timeout)
        self._client.disconnect()
        self._client.loop_stop()

    # -- paho callbacks (network thread) --------------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: object, flags: object, reason: ReasonCode, _p: object) -> None:
        if reason.is_failure:
            self.stats.last_error = f"connect refused: {reason}"
            logger.error("shore ingest: broker refused the connection: %s", reason)
            return
        self.stats.connects += 1
        self.stats.connected = True
        self.stats.last_error = None
        logger.info("shore ingest: connected (session present: %s)", getattr(flags, "session_present", None))
        if self.cfg.share_group:
            # A session that ran without the group keeps its plain subscriptions: drop them, or this process
            # would get every count twice (once for itself, once as its share), deduplicated but parsed twice.
            plain = {flt for flt, _ in subscriptions(self.cfg.topic_prefix)}
            shared = {flt for flt, _ in subscriptions(self.cfg.topic_prefix, self.cfg.share_group)}
            client.unsubscribe(sorted(plain - shared))
        rc, _mid = client.subscribe(subscriptions(self.cfg.topic_prefix, self.cfg.share_group))
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            logger.warning("shore ingest: subscribe failed: %s", mqtt.error_string(rc))

    def _on_subscribe(self, _c: mqtt.Client, _u: object, _mid: int, reasons: list[ReasonCode], _p: object) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            logger.warning("shore ingest: broker refused some subscriptions: %s", refused)
        else:
            logger.info("shore ingest: subscribed to %s/…", self.cfg.topic_prefix)
        self._subscribed.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object) -> None:
        self._generation += 1
        self.stats.connected = False
        if not self._stop.is_set():
            self.stats.last_error = f"disconnected: {reason}"
            logger.warning("shore ingest: disconnected (%s); reconnecting", reason)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = msg._topic.decode("utf-8", "replace")  # noqa: SLF001 - paho has no raw-topic accessor
        self.stats.received += 1
        self._queue.put(
            _Message(self._generation, msg.mid, msg.qos, topic, bytes(msg.payload), bool(msg.retain), time.time())
        )

    # -- writer thread --------------------------------------------------------------------------------------------
    def _writer_main(self) -> None:
        while True:
            stopping = self._stop.is_set()
            try:
                first = self._queue.get(timeout=0.0 if stopping else 0.1)
            except queue.Empty:
                if stopping:
                    return
                continue
            batch = [first]
            # Group commit: a short wait for more messages turns many small transactions (each with its fixed cost,
            # and each taking the GIL from the network thread) into a few large ones.
            deadline = time.monotonic() + (0.0 if stopping else self.cfg.commit_linger_s)
            while len(batch) < self.cfg.batch_max:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        batch.append(self._queue.get(timeout=left))
                    except queue.Empty:
                        break
            self._commit(batch)
            if stopping:
                # What was queued when stop began is committed; anything later stays unacknowledged and comes
                # back to the next run, so a busy fleet cannot keep the process from stopping.
                return

    def _parse(self, m: _Message) -> list[Record]:
        try:
            return self.parser.parse(m.topic, m.payload, m.retained, m.at)
        except Exception:  # noqa: BLE001 - one bad message must not stop ingest; it is counted as rejected
            logger.exception("shore ingest: parser failed on %r", m.topic[:200])
            return [RejectRecord("internal", m.topic[:200], m.at)]

    def _commit(self, batch: list[_Message]) -> None:
        records: list[Record] = []
        for m in batch:
            records.extend(self._parse(m))
        delay = 0.2
        while True:
            try:
                result = self.storage.write(records)
                break
            except Exception as exc:  # noqa: BLE001 - database down or locked: keep the batch, retry, ack nothing
                self.stats.write_failures += 1
                self.stats.last_error = f"database write failed: {exc}"
                logger.error("shore ingest: database write failed (%s); retrying in %.1f s", exc, delay)
                if self._stop.wait(delay):
                    return  # unacknowledged: the broker re-sends them to the next run
                delay = min(delay * 2, 5.0)
        self.stats.batches += 1
        self.stats.committed += len(batch)
        self.stats.new_counts += result.new_counts
        self.stats.duplicate_counts += result.duplicate_counts
        self.stats.rejected += result.rejected
        for reason, n in result.reasons.items():
            self.stats.rejected_by_reason[reason] = self.stats.rejected_by_reason.get(reason, 0) + n
        generation = self._generation
        for m in batch:
            if m.qos > 0 and m.generation == generation:
                self._client.ack(m.mid, m.qos)

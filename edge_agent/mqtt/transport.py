"""Thin paho-mqtt 2.x wrapper: connect in the background, reconnect with capped backoff, Last Will, TLS, auth.

paho runs its network loop on its own thread (`loop_start`). Callbacks below run on that thread: they only record
what happened and hand it to the owner through the `TransportEvents` callbacks, which must be quick and must not
call back into paho while holding their own locks (paho holds its internal mutexes while it calls them).

The transport never reports itself connected unless the broker accepted the CONNECT (CONNACK reason success): a
refused connect (bad credentials, not authorised) is logged with the broker's reason and retried with backoff.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.mqtt.config import MqttConfig

logger = logging.getLogger(__name__)


def _noop(*_args: object) -> None:
    return None


class _ShutdownNoiseFilter(logging.Filter):
    """paho 2.2 logs an ERROR from its loop when `disconnect()` closed the socket under it; that is expected."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


_PAHO_LOGGER = logging.getLogger("paho.mqtt")
_PAHO_LOGGER.addFilter(_ShutdownNoiseFilter())


@dataclass
class TransportEvents:
    """Callbacks from the network thread. Keep them short; do not block."""

    on_connected: Callable[[int | None], None] = _noop  # arg: broker's Receive Maximum (MQTT 5) or None
    on_ready: Callable[[], None] = _noop  # subscriptions acknowledged: safe to publish the connect sequence
    on_disconnected: Callable[[str], None] = _noop
    on_message: Callable[[str, bytes], None] = _noop
    on_ack: Callable[[int, bool], None] = _noop  # (mid, accepted)
    subscriptions: Sequence[tuple[str, int]] = field(default_factory=tuple)


@dataclass(frozen=True)
class Will:
    topic: str
    payload: str
    qos: int = 1
    retain: bool = True


class MqttTransport:
    """One paho client for one device."""

    def __init__(self, cfg: MqttConfig, client_id: str, will: Will, events: TransportEvents) -> None:
        self.cfg = cfg
        self.events = events
        self._connected = threading.Event()
        self._ever_connected = False
        self.reconnects = 0
        self.refused_connects = 0
        self.last_error: str | None = None
        protocol = MQTTProtocolVersion.MQTTv5 if cfg.protocol == "5" else MQTTProtocolVersion.MQTTv311
        kwargs: dict[str, object] = {}
        if protocol == MQTTProtocolVersion.MQTTv311:
            # A fresh session each time: paho itself re-sends the QoS 1 messages it still holds, and the outbox
            # holds everything else, so broker-side session state would only add duplicates.
            kwargs["clean_session"] = True
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, reconnect_on_failure=True, **kwargs
        )
        self._protocol = protocol
        # The owner bounds what it hands over (its in-flight window); let paho put all of it on the wire.
        self._client.max_inflight_messages_set(cfg.inflight_window + 64)
        self._client.max_queued_messages_set(0)
        self._client.reconnect_delay_set(cfg.reconnect_min_delay_s, cfg.reconnect_max_delay_s)  # type: ignore[arg-type]
        self._client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
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
        # Safety net: an exception escaping a callback would otherwise end paho's network thread (paho logs it).
        self._client.suppress_exceptions = True
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._pending_sub_mid: int | None = None
        self._started = False
        self._stopping = False

    # -- state ------------------------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True only between an accepted CONNACK and the next disconnect."""
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background; paho keeps reconnecting until `stop`."""
        kwargs: dict[str, object] = {}
        if self._protocol == MQTTProtocolVersion.MQTTv5:
            kwargs["clean_start"] = True
        logger.info("MQTT: connecting to %s:%d (MQTT %s)", self.cfg.host, self.cfg.port, self.cfg.protocol)
        self._stopping = False
        self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s, **kwargs)
        self._client.loop_start()
        self._started = True

    def publish(self, topic: str, payload: bytes | str, qos: int, retain: bool = False) -> int | None:
        """Hand a message to paho; return its mid, or None if paho refused to take it."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            # NO_CONN: a QoS 1 message stays in paho and goes out after the reconnect; QoS 0 is simply lost.
            return info.mid
        logger.warning("MQTT: publish to %s not accepted by the client: %s", topic, mqtt.error_string(info.rc))
        return None

    def publish_and_wait(self, topic: str, payload: str, qos: int, retain: bool, timeout: float) -> bool:
        """Publish and wait for the broker's acknowledgement (QoS 1) or the write (QoS 0)."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as exc:  # raised when the connection went away meanwhile
            logger.debug("MQTT: waiting for %s failed: %s", topic, exc)
            return False
        return info.is_published()

    def stop(self, final: tuple[str, str] | None, timeout: float) -> None:
        """Optionally publish `final` (retained, QoS 1) and wait for it, then disconnect cleanly (no Last Will)."""
        if not self._started:
            return
        if final is not None and self.connected:
            ok = self.publish_and_wait(final[0], final[1], qos=1, retain=True, timeout=timeout)
            if not ok:
                logger.warning("MQTT: %s=%s was not acknowledged before the timeout", final[0], final[1])
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()
        self._started = False

    # -- paho callbacks (network thread) ------------------------------------------------------------------------
    def _on_connect(
        self, client: mqtt.Client, _userdata: object, _flags: object, reason: ReasonCode, properties: object
    ) -> None:
        if reason.is_failure:
            # Never mark ourselves connected after a refused connect; paho retries with the backoff.
            self.refused_connects += 1
            self.last_error = f"connect refused: {reason}"
            logger.error("MQTT: broker %s:%d refused the connection: %s", self.cfg.host, self.cfg.port, reason)
            return
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        self.last_error = None
        receive_max = getattr(properties, "ReceiveMaximum", None) if properties is not None else None
        self._connected.set()
        logger.info("MQTT: connected to %s:%d", self.cfg.host, self.cfg.port)
        self.events.on_connected(receive_max)
        subs = list(self.events.subscriptions)
        if subs:
            rc, mid = client.subscribe(subs)
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._pending_sub_mid = mid
                return
            logger.warning("MQTT: subscribe failed: %s", mqtt.error_string(rc))
        self.events.on_ready()

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: object) -> None:
        # paho gives no detail here; say what it can be, once per outage, then keep quiet while retrying.
        first = self.last_error != "broker unreachable"
        self.last_error = "broker unreachable"
        log = logger.warning if first else logger.debug
        log("MQTT: cannot connect to %s:%d (refused, unreachable, DNS or TLS failure); retrying with backoff "
            "up to %.0f s; messages are kept in the outbox", self.cfg.host, self.cfg.port,
            self.cfg.reconnect_max_delay_s)

    def _on_subscribe(
        self, _client: mqtt.Client, _userdata: object, mid: int, reasons: list[ReasonCode], _props: object
    ) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            logger.warning("MQTT: broker refused some subscriptions: %s", refused)
        if mid == self._pending_sub_mid:
            self._pending_sub_mid = None
            self.events.on_ready()

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: object, _flags: object, reason: ReasonCode, _props: object
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if was_connected and self._stopping:
            logger.info("MQTT: disconnected from %s:%d", self.cfg.host, self.cfg.port)
        elif was_connected:
            logger.warning("MQTT: disconnected from %s:%d (%s)", self.cfg.host, self.cfg.port, reason)
            self.events.on_disconnected(str(reason))

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:  # brokers validate topics, but do not trust that on the device
            topic = message._topic.decode("utf-8", "replace")  # noqa: SLF001 - paho exposes no raw-topic accessor
        self.events.on_message(topic, bytes(message.payload))

    def _on_publish(
        self, _client: mqtt.Client, _userdata: object, mid: int, reason: ReasonCode, _props: object
    ) -> None:
        self.events.on_ack(mid, not reason.is_failure)

"""Thin paho-mqtt 2.x wrapper: connect in the background, reconnect with capped backoff, Last Will, TLS, auth.

paho runs its network loop on its own thread (`loop_start`). Callbacks below run on that thread: they only record
what happened and hand it to the owner through the `TransportEvents` callbacks, which must be quick and must not
call back into paho while holding their own locks (paho holds its internal mutexes while it calls them).

The transport never reports itself connected unless the broker accepted the CONNECT (CONNACK reason success): a
refused connect (bad credentials, not authorised) is logged with the broker's reason and retried with backoff, and
an exception while handling the CONNACK (e.g. a subscribe paho refuses) counts as a failed connection: it is logged,
the connection is dropped and retried with backoff.

Inbound size: with MQTT 5 the CONNECT carries Maximum Packet Size (`max_inbound_bytes` plus room for the topic), so
the broker discards bigger messages instead of sending them: they never reach this process's memory. (MQTT 3.1.1
has no such property; see docs/mqtt.md for the broker-side settings.)

A second client with our client id (a second agent with the same device_id) makes the broker disconnect us
("session taken over" in MQTT 5 - Mosquitto 2.0 instead just closes the connection, right after it was made, again
and again).
Either is logged as such, once, and reconnects then back off to `reconnect_max_delay_s` instead of fighting.

QoS 0 writes also end in paho's publish callback with a message id; only ids of QoS 1 messages are reported as
acknowledgements, so a QoS 0 message can never be taken for a stored message that happens to share its id.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
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

# Room in Maximum Packet Size for the fixed header, the topic and the properties of an inbound PUBLISH.
PACKET_OVERHEAD_BYTES = 1024
_SESSION_TAKEN_OVER = 142  # MQTT 5 DISCONNECT reason code
# A connection closed this soon after its CONNACK, this many times in a row, looks like a client-id fight (3.1.1).
_FLAP_S = 3.0
_FLAPS = 3
# A connection that lasted this long ends a takeover episode: the normal reconnect delays apply again.
_STABLE_S = 60.0


@dataclass
class TransportEvents:
    """Callbacks from the network thread. Keep them short; do not block."""

    on_connected: Callable[[int | None], None] = _noop  # arg: broker's Receive Maximum (MQTT 5) or None
    on_ready: Callable[[], None] = _noop  # subscriptions acknowledged: safe to publish the connect sequence
    on_disconnected: Callable[[str], None] = _noop
    on_message: Callable[[str, bytes], None] = _noop
    on_ack: Callable[[int, bool, str], None] = _noop  # (mid, accepted, reason) for QoS 1 messages only
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
        self.takeovers = 0
        self.last_error: str | None = None
        # Guards the mid sets. Held across a QoS 0 publish (so its write callback, which may beat publish()
        # returning the mid, waits until the mid is known to be QoS 0) but never across a QoS 1 publish: paho
        # holds its message mutex while reporting a PUBACK, so that would deadlock.
        self._mid_lock = threading.RLock()
        self._qos0_publisher: int | None = None  # thread id inside a QoS 0 publish (a callback it triggers itself)
        self._qos0_written_early: set[int] = set()
        self._qos1_mids: set[int] = set()
        self._qos0_mids: set[int] = set()
        self._early: dict[int, tuple[bool, str]] = {}  # callbacks that beat publish() returning the mid
        self._connected_at = 0.0
        self._refused_in_connection = False
        self._flaps = 0
        self._backing_off = False
        self._restarting = False
        self._failed_connacks = 0
        protocol = MQTTProtocolVersion.MQTTv5 if cfg.protocol == "5" else MQTTProtocolVersion.MQTTv311
        # A fresh session each time: paho itself re-sends the QoS 1 messages it still holds, and the outbox
        # holds everything else, so broker-side session state would only add duplicates. (MQTT 5 says it with
        # clean_start at connect; paho refuses clean_session there.)
        clean_session = True if protocol == MQTTProtocolVersion.MQTTv311 else None
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            reconnect_on_failure=True,
            clean_session=clean_session,
        )
        self._protocol = protocol
        self._client_id = client_id
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
        # What every connect_async passes (start and the restart after a failed CONNACK handler): paho refuses a
        # clean_start other than its default, and any properties, under MQTT 3.1.1.
        self._clean_start: bool | Literal[3] = mqtt.MQTT_CLEAN_START_FIRST_ONLY
        self._connect_properties: Properties | None = None
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
        if self._protocol == MQTTProtocolVersion.MQTTv5:
            self._clean_start = True
            props = Properties(PacketTypes.CONNECT)
            props.MaximumPacketSize = self.cfg.max_inbound_bytes + PACKET_OVERHEAD_BYTES
            self._connect_properties = props
        logger.info("MQTT: connecting to %s:%d (MQTT %s)", self.cfg.host, self.cfg.port, self.cfg.protocol)
        self._stopping = False
        self._client.connect_async(
            self.cfg.host,
            self.cfg.port,
            keepalive=self.cfg.keepalive_s,
            clean_start=self._clean_start,
            properties=self._connect_properties,
        )
        self._client.loop_start()
        self._started = True

    def publish(self, topic: str, payload: bytes | str, qos: int, retain: bool = False) -> int | None:
        """Hand a message to paho; return its mid, or None if paho refused to take it."""
        info = self._publish(topic, payload, qos, retain)
        if info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            # NO_CONN: a QoS 1 message stays in paho and goes out after the reconnect; QoS 0 is simply lost.
            return info.mid
        logger.warning("MQTT: publish to %s not accepted by the client: %s", topic, mqtt.error_string(info.rc))
        return None

    def _publish(self, topic: str, payload: bytes | str, qos: int, retain: bool) -> mqtt.MQTTMessageInfo:
        """paho's publish, with the mid recorded as QoS 0 or QoS 1 before its callback can be taken for the other."""
        if qos == 0:
            with self._mid_lock:
                self._qos0_publisher = threading.get_ident()
                try:
                    info = self._client.publish(topic, payload, qos=0, retain=retain)
                finally:
                    self._qos0_publisher = None
                if info.mid in self._qos0_written_early:
                    self._qos0_written_early.discard(info.mid)
                elif info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self._qos0_mids.add(info.mid)
            return info
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            return info
        with self._mid_lock:
            early = self._early.pop(info.mid, None)
            if early is None:
                self._qos1_mids.add(info.mid)
        if early is not None:  # acknowledged before publish() returned
            self.events.on_ack(info.mid, *early)
        return info

    def publish_and_wait(self, topic: str, payload: str, qos: int, retain: bool, timeout: float) -> bool:
        """Publish and wait for the broker's acknowledgement (QoS 1) or the write (QoS 0)."""
        info = self._publish(topic, payload, qos, retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as exc:  # raised when the connection went away meanwhile
            logger.debug("MQTT: waiting for %s failed: %s", topic, exc)
            return False
        return info.is_published()

    def stop(self, final: Sequence[tuple[str, str]] | None, timeout: float) -> None:
        """Publish the `final` messages (retained, QoS 1), the last one waited for, then disconnect (no Will)."""
        if not self._started:
            return
        messages = list(final or [])
        if messages and self.connected:
            for topic, payload in messages[:-1]:
                self.publish(topic, payload, qos=1, retain=True)
            topic, payload = messages[-1]
            ok = self.publish_and_wait(topic, payload, qos=1, retain=True, timeout=timeout)
            if not ok:
                logger.warning("MQTT: %s=%s was not acknowledged before the timeout", topic, payload)
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()
        self._started = False

    # -- paho callbacks (network thread) ------------------------------------------------------------------------
    def _on_connect(
        self, client: mqtt.Client, _userdata: object, _flags: object, reason: ReasonCode, properties: object
    ) -> None:
        try:
            self._handle_connack(client, reason, properties)
        except Exception as exc:  # noqa: BLE001 - whatever it was, this connection is not usable
            self._connected.clear()
            self._failed_connacks += 1
            self.last_error = f"connect handling failed: {type(exc).__name__}: {exc}"
            logger.error(
                "MQTT: handling the broker's CONNACK failed (%s: %s); treating the connection as failed and retrying",
                type(exc).__name__,
                exc,
            )
            self.events.on_disconnected(self.last_error)
            self._restart_later()

    def _restart_later(self) -> None:
        """Drop this connection and connect again after a backoff (from a helper thread: paho's own loop thread
        cannot stop itself)."""
        if self._restarting or self._stopping:
            return
        self._restarting = True
        delay = min(
            self.cfg.reconnect_min_delay_s * 2 ** min(self._failed_connacks - 1, 16), self.cfg.reconnect_max_delay_s
        )

        def restart() -> None:
            try:
                self._client.disconnect()
                self._client.loop_stop()
                time.sleep(delay)
                if not self._stopping:
                    # A fresh connect_async: after disconnect() paho's loop would otherwise just exit.
                    self._client.connect_async(
                        self.cfg.host,
                        self.cfg.port,
                        keepalive=self.cfg.keepalive_s,
                        clean_start=self._clean_start,
                        properties=self._connect_properties,
                    )
                    self._client.loop_start()
            except (OSError, ValueError) as exc:  # the loop thread keeps retrying from here
                logger.debug("MQTT: reconnect after a failed CONNACK: %s", exc)
            finally:
                self._restarting = False

        threading.Thread(target=restart, name="mqtt-restart", daemon=True).start()

    def _handle_connack(self, client: mqtt.Client, reason: ReasonCode, properties: object) -> None:
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
        self._connected_at = time.monotonic()
        self._refused_in_connection = False
        with self._mid_lock:
            self._qos0_mids.clear()  # QoS 0 messages of an earlier connection will never be written now
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
        self._failed_connacks = 0
        self.events.on_ready()

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: object) -> None:
        # paho gives no detail here: once per outage, find the cause with a probe of our own (TCP, then the TLS
        # handshake with the same CA and host-name rules), say it, then keep quiet while retrying.
        first = self.last_error is None or not self.last_error.startswith("cannot connect")
        if not first:
            logger.debug("MQTT: still cannot connect to %s:%d (%s)", self.cfg.host, self.cfg.port, self.last_error)
            return
        cause = probe_connect(self.cfg)
        self.last_error = f"cannot connect: {cause}"
        logger.warning(
            "MQTT: cannot connect to %s:%d: %s; retrying with backoff up to %.0f s; messages are kept in the outbox",
            self.cfg.host,
            self.cfg.port,
            cause,
            self.cfg.reconnect_max_delay_s,
        )

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
        if was_connected and not self._stopping:
            self._check_takeover(reason)
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
        accepted = not reason.is_failure
        if not accepted:
            self._refused_in_connection = True
        with self._mid_lock:
            if self._qos0_publisher == threading.get_ident():
                self._qos0_written_early.add(mid)  # written from inside our own QoS 0 publish() call
                return
            if mid in self._qos0_mids:
                self._qos0_mids.discard(mid)  # a QoS 0 message was written: nothing to acknowledge
                return
            if mid not in self._qos1_mids:
                self._early[mid] = (accepted, str(reason))  # publish() has not returned the mid yet
                return
            self._qos1_mids.discard(mid)
        self.events.on_ack(mid, accepted, str(reason))

    def _check_takeover(self, reason: ReasonCode) -> None:
        """Recognise a second client with our id (see module doc) and back off instead of fighting it."""
        now = time.monotonic()
        lasted = now - self._connected_at
        if lasted >= _STABLE_S and self._backing_off:
            self._backing_off = False
            self._client.reconnect_delay_set(self.cfg.reconnect_min_delay_s, self.cfg.reconnect_max_delay_s)  # type: ignore[arg-type]
        taken_over = getattr(reason, "value", None) == _SESSION_TAKEN_OVER
        # An MQTT 5 broker may say so (reason 142; Mosquitto 2.0 just closes the socket). Otherwise: repeated drops
        # right after connecting, unless the broker had just refused a publish (some drop the client for that).
        early = lasted < _FLAP_S and not self._refused_in_connection
        self._flaps = self._flaps + 1 if early else 0
        if not (taken_over or self._flaps >= _FLAPS):
            return
        self.takeovers += 1
        self._flaps = 0
        delay = self.cfg.reconnect_max_delay_s
        self.last_error = "session taken over by another client with the same client id"
        if not self._backing_off:
            self._backing_off = True
            logger.warning(
                "MQTT: the broker disconnected us for another client with our client id %r (%s) - is a second "
                "agent running with the same device_id? Not fighting it: reconnecting every %.0f s only.",
                self._client_id,
                "session taken over" if taken_over else "closed right after connecting",
                delay,
            )
        # paho waits at least min_delay before its next reconnect; restored after a stable connection.
        self._client.reconnect_delay_set(delay, max(delay, self.cfg.reconnect_max_delay_s))  # type: ignore[arg-type]


def probe_connect(cfg: MqttConfig, timeout: float = 5.0) -> str:
    """Why a connection to the broker fails, in words: DNS, TCP refusal, TLS CA or host-name mismatch, ..."""
    try:
        sock = socket.create_connection((cfg.host, cfg.port), timeout=timeout)
    except socket.gaierror as exc:
        return f"host name {cfg.host!r} does not resolve ({exc.strerror})"
    except ConnectionRefusedError:
        return "connection refused (nothing listens on that port, or a firewall rejects it)"
    except TimeoutError:
        return f"no answer within {timeout:.0f} s (host down or packets dropped)"
    except OSError as exc:
        return f"network error: {exc.strerror or exc}"
    with sock:
        if cfg.tls is None:
            return "the TCP connection works but the MQTT connection failed (wrong port? the broker wants TLS?)"
        try:
            ctx = ssl.create_default_context(cafile=str(cfg.tls.ca_file) if cfg.tls.ca_file else None)
            if cfg.tls.cert_file is not None:
                ctx.load_cert_chain(str(cfg.tls.cert_file), str(cfg.tls.key_file) if cfg.tls.key_file else None)
            if cfg.tls.insecure:
                ctx.check_hostname = False
            with ctx.wrap_socket(sock, server_hostname=cfg.host):
                pass
        except ssl.SSLCertVerificationError as exc:
            detail = exc.verify_message or str(exc)
            if "hostname" in detail.lower() or "ip address mismatch" in detail.lower():
                return f"TLS host-name check failed: {detail} (connect by the name in the certificate)"
            return f"TLS certificate verification failed: {detail} (is tls.ca_file the CA that signed the broker?)"
        except ssl.SSLError as exc:
            return f"TLS handshake failed: {exc.reason or exc}"
        except OSError as exc:
            return f"TLS failure: {exc}"
    return "TCP and TLS work but the MQTT connection failed (see the broker's log)"

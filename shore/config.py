"""Typed settings of the shore station (pydantic, `extra="forbid"`: a typo fails at start-up with its name)."""

from __future__ import annotations

import ipaddress
import os

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from edge_agent.mqtt.config import TlsConfig

TOKEN_ENV = "STARFISH_SHORE_TOKEN"
MQTT_PASSWORD_ENV = "STARFISH_SHORE_MQTT_PASSWORD"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IngestConfig(_Strict):
    host: str = Field(default="127.0.0.1", min_length=1, description="MQTT broker host.")
    port: int = Field(default=1883, ge=1, le=65535, description="MQTT broker port.")
    username: str | None = Field(
        default=None,
        description="Broker user name (password from $STARFISH_SHORE_MQTT_PASSWORD).",
    )
    password: SecretStr | None = Field(default=None, description="Broker password; prefer the environment variable.")
    topic_prefix: str = Field(
        default="starfish",
        min_length=1,
        description="Fleet topic prefix (`{prefix}/{device_id}/…`).",
    )
    tls: TlsConfig | None = Field(
        default=None,
        description="TLS towards the broker (the agent's own TLS block: CA, client certificate).",
    )
    client_id: str = Field(
        default="starfish-shore",
        min_length=1,
        max_length=64,
        description="MQTT client id; it names the persistent session, so keep it stable across restarts.",
    )
    share_group: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.\-]{1,64}$",
        description="MQTT 5 shared-subscription group: several ingest processes (each with its own client id) "
        "split the counts between them. Retained states are subscribed by every process.",
    )
    session_expiry_s: int = Field(
        default=7 * 24 * 3600,
        ge=60,
        description="How long the broker keeps our session (and queues counts) while away.",
    )
    keepalive_s: int = Field(default=15, ge=2, le=3600, description="MQTT keepalive.")
    receive_maximum: int = Field(
        default=1000,
        ge=1,
        le=65535,
        description="QoS 1 messages the broker may send before our acknowledgements.",
    )
    max_payload_bytes: int = Field(default=65536, ge=256, description="Larger messages are counted and ignored.")
    batch_max: int = Field(default=1000, ge=1, description="Most messages committed in one transaction.")
    commit_linger_s: float = Field(
        default=0.02,
        ge=0,
        le=1.0,
        description="Group commit: after the first message of a batch, wait this long for more before committing "
        "(fewer, larger transactions; every message is still acknowledged only after its commit).",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=32,
        description="Ingest processes sharing the counts through an MQTT 5 shared subscription (`share_group`, "
        "default `shore` when workers > 1); worker k > 0 uses client id `{client_id}-w{k}`.",
    )
    reconnect_max_delay_s: float = Field(default=5.0, gt=0, description="Cap of the reconnect back-off.")

    @model_validator(mode="after")
    def _check(self) -> IngestConfig:
        if self.password is not None and self.username is None:
            raise ValueError("password is set but username is not")
        if any(c in self.topic_prefix for c in "+#\0") or self.topic_prefix.startswith("/"):
            raise ValueError(f"topic_prefix {self.topic_prefix!r} must have no '+', '#' or leading '/'")
        if self.workers > 1 and self.share_group is None:
            self.share_group = "shore"
        return self

    def resolved_password(self) -> str | None:
        if self.password is not None:
            return self.password.get_secret_value()
        return os.environ.get(MQTT_PASSWORD_ENV)


class WebConfig(_Strict):
    host: str = Field(default="127.0.0.1", description="Bind address; anything but loopback requires a token.")
    port: int = Field(default=8080, ge=1, le=65535, description="HTTP port.")
    token: SecretStr | None = Field(
        default=None,
        description=f"Access token (or ${TOKEN_ENV}); required off loopback.",
    )
    sse_heartbeat_s: float = Field(
        default=15.0,
        gt=0,
        description="Comment line sent on an idle live-update stream.",
    )
    sse_poll_s: float = Field(
        default=0.5,
        gt=0,
        description="How often the live-update stream looks for new data.",
    )
    title: str = Field(default="Starfish shore station", max_length=100, description="Page title.")

    @model_validator(mode="after")
    def _check(self) -> WebConfig:
        if self.token is None and os.environ.get(TOKEN_ENV):
            self.token = SecretStr(os.environ[TOKEN_ENV])
        if self.token is None and not is_loopback(self.host):
            raise ValueError(
                f"binding to {self.host} needs a token (--token or ${TOKEN_ENV}); "
                "without one, only 127.0.0.1 / ::1 are allowed"
            )
        if self.token is not None and len(self.token.get_secret_value()) < 16:
            raise ValueError("the token must be at least 16 characters")
        return self


class ShoreSettings(_Strict):
    db: str = Field(default=".starfish-shore/shore.db", description="SQLite file path, or a postgresql:// URL.")
    db_schema: str | None = Field(default=None, description="PostgreSQL schema to use (created when missing).")
    mqtt: IngestConfig = Field(default_factory=IngestConfig, description="MQTT ingest.")
    web: WebConfig = Field(default_factory=WebConfig, description="Web dashboard and API.")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

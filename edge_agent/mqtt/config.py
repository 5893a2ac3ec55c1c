"""Typed MQTT configuration: every field described, unknown keys rejected, cross-field rules checked up front."""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from edge_agent.mqtt.topics import check_level, check_topic_root


class TlsConfig(BaseModel):
    """TLS towards the broker. An empty block (`tls: {}`) means TLS with the system trust store."""

    model_config = ConfigDict(extra="forbid")

    ca_file: Path | None = Field(
        None,
        description="PEM file with the CA certificate(s) that signed the broker's certificate; "
        "None uses the system trust store.",
    )
    cert_file: Path | None = Field(None, description="PEM client certificate, for brokers that require one.")
    key_file: Path | None = Field(None, description="PEM private key matching `cert_file`.")
    insecure: bool = Field(
        False,
        description="Skip the broker host-name check (the certificate chain is still verified). "
        "Only for test brokers addressed by IP.",
    )

    @model_validator(mode="after")
    def _check_files(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            raise ValueError(f"tls.{missing} is required when the other half of the client certificate is given")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"tls.{name}: file not found: {path}")
        # Load them now, as the connection will: a file that is not PEM fails here, not at run time.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if self.ca_file is not None:
            try:
                ctx.load_verify_locations(cafile=str(self.ca_file))
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise ValueError(
                    f"tls.ca_file: {self.ca_file} is not a readable PEM CA certificate file ({exc})"
                ) from exc
        if self.cert_file is not None:
            try:
                ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise ValueError(
                    f"tls.cert_file/key_file: {self.cert_file} and {self.key_file} are not a matching "
                    f"PEM certificate and unencrypted key ({exc})"
                ) from exc
        return self


class DiscoveryConfig(BaseModel):
    """Home Assistant MQTT discovery."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Publish Home Assistant discovery configs so sensors appear by themselves.")
    prefix: str = Field(
        "homeassistant",
        min_length=1,
        description="Home Assistant discovery prefix (its `discovery_prefix`); "
        "topic levels without `+`, `#` or a leading `/`.",
    )

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return check_topic_root("discovery.prefix", value)


class CountsConfig(BaseModel):
    """How counts messages are produced."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["per_frame", "aggregate"] = Field(
        "per_frame",
        description="`per_frame`: one counts message per processed frame; `aggregate`: one message per "
        "camera every `interval_s` summarising the frames in that window.",
    )
    interval_s: float = Field(5.0, gt=0, le=3600, description="Aggregation window in seconds (mode `aggregate`).")
    include_detections: bool = Field(True, description="Include per-box detections in per-frame counts messages.")


class MqttConfig(BaseModel):
    """Broker connection and publishing behaviour of the edge agent."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", min_length=1, description="Broker host name or IP address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker TCP port (8883 is the usual TLS port).")
    protocol: Literal["5", "3.1.1"] = Field("5", description="MQTT protocol version.")
    username: str | None = Field(None, description="User name for broker authentication; needs a password.")
    password: SecretStr | None = Field(
        None, description="Password for broker authentication. Prefer `password_env` so it stays out of files."
    )
    password_env: str | None = Field(
        None, description="Name of an environment variable holding the password (read at start-up)."
    )
    tls: TlsConfig | None = Field(None, description="TLS settings; None means a plain TCP connection.")
    topic_prefix: str = Field(
        "starfish", min_length=1, description="First topic level; topics are `{topic_prefix}/{device_id}/…`."
    )
    fleet: str | None = Field(
        None, description="Fleet name: the agent also listens to `{topic_prefix}/fleet/{fleet}/model`."
    )
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keep-alive; the Last Will fires after ~1.5x this.")
    reconnect_min_delay_s: float = Field(1.0, gt=0, le=60, description="First reconnect delay (doubles each try).")
    reconnect_max_delay_s: float = Field(30.0, gt=0, le=3600, description="Cap on the reconnect delay.")
    inflight_window: int = Field(
        200,
        ge=1,
        le=10000,
        description="Most outbox messages handed to the MQTT client and not yet acknowledged. "
        "The outbox, not the client's memory, holds everything else.",
    )
    counts: CountsConfig = Field(default_factory=CountsConfig, description="Counts message production.")
    stats_interval_s: float = Field(10.0, gt=0, le=3600, description="How often the agent publishes `stats`.")
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig, description="Home Assistant discovery.")
    max_inbound_bytes: int = Field(
        65536, ge=16, le=16 * 1024 * 1024, description="Inbound payloads larger than this are rejected unread."
    )

    @field_validator("topic_prefix")
    @classmethod
    def _topic_prefix(cls, value: str) -> str:
        return check_topic_root("topic_prefix", value)

    @field_validator("fleet")
    @classmethod
    def _fleet(cls, value: str | None) -> str | None:
        return None if value is None else check_level("fleet", value)

    @model_validator(mode="after")
    def _check_auth(self) -> MqttConfig:
        if self.password is not None and self.password_env is not None:
            raise ValueError("password and password_env are mutually exclusive; give one")
        has_password = self.password is not None or self.password_env is not None
        if self.username is not None and not has_password:
            raise ValueError("username is set but neither password nor password_env is; the broker would refuse")
        if self.username is None and has_password:
            raise ValueError("password is set but username is not")
        if self.reconnect_max_delay_s < self.reconnect_min_delay_s:
            raise ValueError("reconnect_max_delay_s must be >= reconnect_min_delay_s")
        return self

    def resolved_password(self) -> str | None:
        """The password, read from the environment when `password_env` names a variable."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ValueError(f"password_env: environment variable {self.password_env!r} is not set")
            return value
        return None

"""Fixtures for the shore station: storage over both real engines, a raw MQTT publisher of crafted messages.

`storage` is parametrized over SQLite (a file under tmp_path) and the real PostgreSQL on 127.0.0.1:5432; each
PostgreSQL test gets its own schema, dropped afterwards, so parallel runs never collide. Set
`STARFISH_TEST_PG_URL` to point elsewhere.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

PG_URL = os.environ.get("STARFISH_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def pg_available() -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'starfish-edge[shore]')"
    try:
        with psycopg.connect(PG_URL, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL at {PG_URL} is not reachable ({str(exc).strip()[:120]}); .ci/run starts it"


def drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def pg_schema() -> Iterator[str]:
    reason = pg_available()
    if reason:
        pytest.skip(reason)
    schema = f"shore_test_{uuid.uuid4().hex[:12]}"
    yield schema
    drop_schema(schema)


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str | None]]:
    """(url, schema) of an empty database of each engine."""
    if request.param == "sqlite":
        yield str(tmp_path / "shore.db"), None
        return
    reason = pg_available()
    if reason:
        pytest.skip(reason)
    schema = f"shore_test_{uuid.uuid4().hex[:12]}"
    yield PG_URL, schema
    drop_schema(schema)


@pytest.fixture
def storage(storage_url: tuple[str, str | None]) -> Iterator[Any]:
    from shore.storage import open_storage

    st = open_storage(storage_url[0], schema=storage_url[1])
    yield st
    st.close()


def counts_payload(device_id: str, camera_id: str, seq: int, *, ts: datetime | None = None, count: int = 1,
                   unique: int = 0, session: int = 1, outbox_id: str | None = "ob-test", frame: int | None = None,
                   historical: bool = False, **extra: Any) -> bytes:
    """A counts payload as the agent sends it (plus `outbox_id`, which the hardened outbox adds)."""
    doc: dict[str, Any] = {
        "schema_version": 1, "device_id": device_id, "camera_id": camera_id, "session": session, "seq": seq,
        "ts": (ts or datetime.now(timezone.utc)).isoformat().replace("+00:00", "Z"),
        "frame": seq if frame is None else frame, "count": count, "unique_count": unique, "historical": historical,
    }
    if outbox_id is not None:
        doc["outbox_id"] = outbox_id
    doc.update(extra)
    return json.dumps(doc).encode()


@pytest.fixture
def raw_publisher() -> Iterator[Callable[[str, int], Any]]:
    """Factory of connected paho clients (MQTT 5) for publishing crafted messages; all stopped afterwards."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    clients: list[Any] = []

    def make(host: str, port: int) -> Any:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"raw-{uuid.uuid4().hex[:8]}",
                             protocol=MQTTProtocolVersion.MQTTv5)
        client.connect(host, port, keepalive=10)
        client.loop_start()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.disconnect()
        client.loop_stop()

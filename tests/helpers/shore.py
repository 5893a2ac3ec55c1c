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


def counts_payload(
    device_id: str,
    camera_id: str,
    seq: int,
    *,
    ts: datetime | None = None,
    count: int = 1,
    unique: int = 0,
    session: int = 1,
    outbox_id: str | None = "ob-test",
    frame: int | None = None,
    historical: bool = False,
    **extra: Any,
) -> bytes:
    """A counts payload as the agent sends it (plus `outbox_id`, which the hardened outbox adds)."""
    doc: dict[str, Any] = {
        "schema_version": 1,
        "device_id": device_id,
        "camera_id": camera_id,
        "session": session,
        "seq": seq,
        "ts": (ts or datetime.now(timezone.utc)).isoformat().replace("+00:00", "Z"),
        "frame": seq if frame is None else frame,
        "count": count,
        "unique_count": unique,
        "historical": historical,
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
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"raw-{uuid.uuid4().hex[:8]}", protocol=MQTTProtocolVersion.MQTTv5
        )
        client.connect(host, port, keepalive=10)
        client.loop_start()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.disconnect()
        client.loop_stop()


REPO_ROOT = Path(__file__).resolve().parents[2]


class Proc:
    """A child process of this repository's Python, logging to a file; `kill9()` is a real SIGKILL."""

    def __init__(self, args: list[str], log: Path) -> None:
        import subprocess
        import sys

        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
        self.log = log
        self._out = open(log, "ab")  # noqa: SIM115 - closed in stop()/kill9()
        self.proc = subprocess.Popen(
            [sys.executable, *args], cwd=REPO_ROOT, env=env, stdout=self._out, stderr=subprocess.STDOUT
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        import signal

        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._out.close()

    def stop(self, timeout: float = 15.0) -> int:
        import signal
        import subprocess

        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._out.close()
        return int(self.proc.returncode)

    def wait_for(self, text: str, timeout: float = 30.0) -> bool:
        """Wait until `text` appears in the process's output (or it exits)."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return True
            if not self.alive():
                return text in self.output()
            time.sleep(0.05)
        return False

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log.read_text(errors="replace")


def synthetic_publisher(
    port: int,
    workdir: Path,
    device_id: str = "boat-1",
    *,
    rate: float = 20.0,
    count: int = 0,
    keepalive: int = 5,
    camera: str = "cam0",
) -> Proc:
    """The edge agent's own publisher + outbox (edge_agent.mqtt.synthetic) in its own process."""
    workdir.mkdir(parents=True, exist_ok=True)
    return Proc(
        [
            "-m",
            "edge_agent.mqtt.synthetic",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--device-id",
            device_id,
            "--camera",
            camera,
            "--outbox",
            str(workdir / f"{device_id}-outbox.db"),
            "--rate",
            str(rate),
            "--count",
            str(count),
            "--keepalive",
            str(keepalive),
        ],
        workdir / f"{device_id}.log",
    )


def shore_process(
    port: int,
    db: Path,
    workdir: Path,
    *,
    web_port: int | None = None,
    client_id: str = "shore-test",
    extra: tuple[str, ...] = (),
) -> Proc:
    """`python -m shore run` against the broker on `port` (ingest only unless `web_port`)."""
    args = ["-m", "shore", "run", "--db", str(db), "--mqtt-port", str(port), "--client-id", client_id, *extra]
    args += ["--port", str(web_port)] if web_port else ["--no-web"]
    return Proc(args, workdir / f"shore-{client_id}.log")


@pytest.fixture
def live_server() -> Iterator[Callable[[Any], str]]:
    """Factory: serve an ASGI app with the real uvicorn on a free loopback port; returns its base URL."""
    import threading
    import time

    import uvicorn

    from tests.helpers.mqtt_broker import free_port

    servers: list[tuple[Any, threading.Thread]] = []

    def serve(app: Any) -> str:
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2)
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 15
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        servers.append((server, thread))
        return f"http://127.0.0.1:{port}"

    yield serve
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def shore_tls(tmp_path: Path) -> dict[str, Path]:
    """A test CA with a broker certificate (localhost, 127.0.0.1) and a client certificate, as PEM files."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def cert(name: str, issuer: Any, issuer_key: Any, key: Any, *, ca: bool = False, server: bool = False) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return builder.sign(issuer_key, hashes.SHA256())

    def write(name: str, certificate: Any, key: Any) -> tuple[Path, Path]:
        crt, pem = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
        crt.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        pem.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return crt, pem

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shore test CA")])
    ca = cert("shore test CA", ca_name, ca_key, ca_key, ca=True)
    files: dict[str, Path] = {}
    files["ca"], _ = write("ca", ca, ca_key)
    for name, server in (("server", True), ("client", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        files[f"{name}_cert"], files[f"{name}_key"] = write(name, cert(name, ca_name, ca_key, key, server=server), key)
    return files

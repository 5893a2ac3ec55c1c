"""`starfish shore …` (also `python -m shore …`): run the station, benchmark its storage."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer
from pydantic import SecretStr, ValidationError

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="Shore station: MQTT ingest into SQLite / PostgreSQL and a live web dashboard.",
)
logger = logging.getLogger(__name__)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _validation_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    section = {"IngestConfig": ["mqtt"], "WebConfig": ["web"], "TlsConfig": ["mqtt"]}.get(exc.title, [])
    where = ".".join(str(p) for p in [*section, *err["loc"]]) or "settings"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return msg if not err["loc"] else f"{where}: {msg}"


def _ensure_logging() -> None:
    # `python -m shore` has no root callback configuring logging; `starfish` does.
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )


def _cannot_listen(host: str, port: int) -> str | None:
    """Why the web server could not bind (port taken, no such address), checked before anything starts."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(infos[0][4])
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


@app.command()
def run(
    db: str = typer.Option(".starfish-shore/shore.db", "--db", help="SQLite file, or postgresql://user@host/db."),
    db_schema: str = typer.Option(None, "--db-schema", help="PostgreSQL schema (created when missing)."),
    mqtt_host: str = typer.Option("127.0.0.1", "--mqtt-host", help="Broker host."),
    mqtt_port: int = typer.Option(1883, "--mqtt-port", help="Broker port."),
    mqtt_user: str = typer.Option(None, "--mqtt-user", help="Broker user (password: $STARFISH_SHORE_MQTT_PASSWORD)."),
    tls_ca: Path = typer.Option(None, "--mqtt-tls-ca", help="TLS to the broker: CA file (PEM)."),
    tls_cert: Path = typer.Option(None, "--mqtt-tls-cert", help="TLS client certificate (PEM)."),
    tls_key: Path = typer.Option(None, "--mqtt-tls-key", help="TLS client key (PEM)."),
    tls: bool = typer.Option(False, "--mqtt-tls", help="TLS with the system trust store (no CA file)."),
    prefix: str = typer.Option("starfish", "--prefix", help="Fleet topic prefix."),
    client_id: str = typer.Option("starfish-shore", "--client-id", help="MQTT client id = persistent session."),
    share_group: str = typer.Option(None, "--share-group", help="MQTT 5 shared subscription group for counts."),
    workers: int = typer.Option(
        1,
        "--workers",
        help="Ingest processes sharing the counts (MQTT 5 shared subscription; group `shore` by default).",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Web bind address (off loopback a token is required)."),
    port: int = typer.Option(8080, "--port", help="Web port."),
    token: str = typer.Option(None, "--token", help="Access token (or $STARFISH_SHORE_TOKEN)."),
    heartbeat: float = typer.Option(15.0, "--sse-heartbeat", help="Seconds between keep-alive comments."),
    no_ingest: bool = typer.Option(False, "--no-ingest", help="Serve the web page only (another process ingests)."),
    no_web: bool = typer.Option(False, "--no-web", help="Ingest only."),
) -> None:
    """Subscribe to the fleet, store every count once, serve the dashboard and the JSON API."""
    _ensure_logging()
    from edge_agent.mqtt.config import TlsConfig
    from shore.config import IngestConfig, ShoreSettings, WebConfig
    from shore.storage import StorageError

    if no_ingest and no_web:
        raise _fail("--no-ingest and --no-web together leave nothing to run")
    try:
        settings = ShoreSettings(
            db=db,
            db_schema=db_schema,
            mqtt=IngestConfig(
                host=mqtt_host,
                port=mqtt_port,
                username=mqtt_user,
                topic_prefix=prefix,
                client_id=client_id,
                share_group=share_group,
                workers=workers,
                tls=TlsConfig(ca_file=tls_ca, cert_file=tls_cert, key_file=tls_key, insecure=False)
                if (tls or tls_ca or tls_cert or tls_key)
                else None,
            ),
            web=WebConfig(host=host, port=port, token=SecretStr(token) if token else None, sse_heartbeat_s=heartbeat),
        )
    except ValidationError as exc:
        raise _fail(_validation_line(exc)) from None
    if not no_web:
        reason = _cannot_listen(host, port)
        if reason:
            raise _fail(f"cannot listen on {host}:{port}: {reason}")
    from shore.server import run as run_server

    try:
        run_server(settings, ingest=not no_ingest, web=not no_web)
    except StorageError as exc:
        raise _fail(" ".join(str(exc).split())) from None


@app.command()
def bench(
    db: list[str] = typer.Option(
        None,
        "--db",
        help="`sqlite` (a temporary file) or a postgresql:// URL, "
        "repeatable; default: sqlite and, when reachable, PostgreSQL on 127.0.0.1.",
    ),
    counts: int = typer.Option(50_000, "--counts", help="Counts messages to ingest."),
    batch: int = typer.Option(200, "--batch", help="Messages per transaction."),
    cameras: int = typer.Option(10, "--cameras", help="Cameras for the chart query."),
    workers: int = typer.Option(1, "--workers", help="Ingest processes for the MQTT figures (shared subscription)."),
    mqtt_only: bool = typer.Option(False, "--mqtt-only", help="Only the end-to-end MQTT figures."),
    out: Path = typer.Option(None, "--out", help="Also write the results as JSON here."),
) -> None:
    """Sustained ingest rate per engine, and the time to serve a 24 h chart of ten cameras."""
    _ensure_logging()
    from shore.bench import run_bench

    try:
        report = run_bench(
            db or None, counts=counts, batch=batch, cameras=cameras, workers=workers, mqtt_only=mqtt_only
        )
    except ValueError as exc:
        raise _fail(str(exc)) from None
    import json

    text = json.dumps(report, indent=2)
    typer.echo(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


@app.command("copy")
def copy_cmd(
    source: str = typer.Option(..., "--from", help="Database to read (SQLite path or postgresql:// URL)."),
    dest: str = typer.Option(..., "--to", help="Database to write (created when missing)."),
    source_schema: str = typer.Option(None, "--from-schema", help="PostgreSQL schema of the source."),
    dest_schema: str = typer.Option(None, "--to-schema", help="PostgreSQL schema of the destination."),
) -> None:
    """Copy counts and surveys to another database (e.g. SQLite → PostgreSQL); safe to re-run."""
    _ensure_logging()
    from shore.copy import copy_history
    from shore.storage import StorageError, open_storage

    if not source.startswith(("postgresql://", "postgres://")) and not Path(source).is_file():
        raise _fail(f"--from {source}: no such SQLite file")
    try:
        with open_storage(source, schema=source_schema) as src, open_storage(dest, schema=dest_schema) as dst:
            result = copy_history(src, dst)
    except StorageError as exc:
        raise _fail(" ".join(str(exc).split())) from None
    typer.echo(f"copied {result.counts_new} new counts (of {result.counts_read} read) and {result.surveys} surveys")

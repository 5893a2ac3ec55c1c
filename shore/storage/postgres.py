"""PostgreSQL engine (psycopg 3), for a fleet that outgrows a laptop; several ingest processes may share it."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Iterator
from typing import Any

from shore.records import CountRecord
from shore.storage.base import SqlStorage, StorageError, ThreadLocalConnections, _count_row

logger = logging.getLogger(__name__)

DDL = """
CREATE TABLE IF NOT EXISTS counts (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id TEXT NOT NULL, camera_id TEXT NOT NULL, outbox_id TEXT NOT NULL, seq BIGINT NOT NULL,
    session BIGINT NOT NULL, ts DOUBLE PRECISION NOT NULL, frame BIGINT NOT NULL, count INTEGER NOT NULL,
    unique_count INTEGER NOT NULL, frames INTEGER NOT NULL, count_sum DOUBLE PRECISION NOT NULL,
    count_max INTEGER NOT NULL, historical BOOLEAN NOT NULL, model TEXT, received_at DOUBLE PRECISION NOT NULL,
    UNIQUE (device_id, outbox_id, seq)
);
CREATE INDEX IF NOT EXISTS counts_ts ON counts (ts);
CREATE INDEX IF NOT EXISTS counts_camera_ts ON counts (device_id, camera_id, ts);
CREATE TABLE IF NOT EXISTS minutes (
    device_id TEXT NOT NULL, camera_id TEXT NOT NULL, session BIGINT NOT NULL, minute BIGINT NOT NULL,
    frames BIGINT NOT NULL, count_sum DOUBLE PRECISION NOT NULL, count_max INTEGER NOT NULL,
    unique_max INTEGER NOT NULL, unique_min INTEGER NOT NULL,
    PRIMARY KEY (device_id, camera_id, session, minute)
);
CREATE INDEX IF NOT EXISTS minutes_chart ON minutes (device_id, camera_id, minute);
CREATE INDEX IF NOT EXISTS minutes_minute ON minutes (minute);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY, first_seen DOUBLE PRECISION, status TEXT, status_at DOUBLE PRECISION,
    last_seen DOUBLE PRECISION, model TEXT, model_at DOUBLE PRECISION, stats TEXT, stats_at DOUBLE PRECISION,
    update_state TEXT, update_state_at DOUBLE PRECISION, last_result TEXT, last_result_at DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS cameras (
    device_id TEXT NOT NULL, camera_id TEXT NOT NULL, status TEXT, status_at DOUBLE PRECISION,
    last_seen DOUBLE PRECISION, last_ts DOUBLE PRECISION, last_seq BIGINT, last_count INTEGER,
    last_unique INTEGER, session BIGINT, last_count_id BIGINT NOT NULL DEFAULT 0, model TEXT,
    PRIMARY KEY (device_id, camera_id)
);
CREATE TABLE IF NOT EXISTS tracks (
    device_id TEXT NOT NULL, camera_id TEXT NOT NULL, session BIGINT NOT NULL, track_id BIGINT NOT NULL,
    event TEXT NOT NULL, first_seen DOUBLE PRECISION NOT NULL, last_seen DOUBLE PRECISION NOT NULL,
    frames INTEGER NOT NULL, max_score DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (device_id, camera_id, session, track_id, event)
);
CREATE TABLE IF NOT EXISTS surveys (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name TEXT NOT NULL, start_ts DOUBLE PRECISION NOT NULL,
    end_ts DOUBLE PRECISION NOT NULL, device_id TEXT, camera_id TEXT, created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS rejects (
    reason TEXT PRIMARY KEY, n BIGINT NOT NULL, last_topic TEXT, last_at DOUBLE PRECISION
);
"""

_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresStorage(SqlStorage):
    engine = "postgresql"
    greatest = "GREATEST"
    least = "LEAST"

    def __init__(self, url: str, *, schema: str | None = None) -> None:
        try:
            import psycopg
        except ImportError as exc:  # the `shore` extra brings psycopg[binary]
            raise StorageError("PostgreSQL needs psycopg: pip install 'starfish-edge[shore]'") from exc
        if schema is not None and not _SCHEMA_RE.fullmatch(schema):
            raise StorageError(f"schema name {schema!r} must match {_SCHEMA_RE.pattern}")
        self._psycopg = psycopg
        self.url = url
        self.schema = schema
        try:
            self._writer = self._connect(autocommit=False)
            with self._writer.transaction(), self._writer.cursor() as cur:
                # Two ingest processes starting together must not race on CREATE TABLE IF NOT EXISTS.
                cur.execute("SELECT pg_advisory_xact_lock(7411)")
                cur.execute(DDL)
        except psycopg.Error as exc:
            raise StorageError(f"cannot open PostgreSQL database {_redact(url)}: {str(exc).strip()}") from exc
        self._lock = threading.Lock()
        self._staged = False  # the writer connection has its `counts_in` table
        self._readers = ThreadLocalConnections(lambda: self._connect(autocommit=True))

    def _connect(self, autocommit: bool) -> Any:
        conn = self._psycopg.connect(
            self.url, autocommit=autocommit, connect_timeout=10, application_name="starfish-shore"
        )
        if self.schema is not None:
            with conn.cursor() as cur:
                cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                cur.execute(f'SET search_path TO "{self.schema}"')
            if not autocommit:
                conn.commit()
        return conn

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    # One short, constant statement per batch (columns as arrays): psycopg and the server parse it once, where a
    # multi-row VALUES list would be a new, long statement every time.
    _insert_chunk = 5000
    _UNNEST = (
        "INSERT INTO counts (device_id, camera_id, outbox_id, seq, session, ts, frame, count, unique_count, frames, "
        "count_sum, count_max, historical, model, received_at) SELECT * FROM unnest(%s::text[], %s::text[], "
        "%s::text[], %s::bigint[], %s::bigint[], %s::float8[], %s::bigint[], %s::int[], %s::int[], %s::int[], "
        "%s::float8[], %s::int[], %s::bool[], %s::text[], %s::float8[]) "
        "ON CONFLICT (device_id, outbox_id, seq) DO NOTHING RETURNING id, device_id, outbox_id, seq"
    )

    def _insert_counts_sql(self, rows: list[tuple[Any, ...]]) -> tuple[str, list[Any]]:
        return self._UNNEST, [list(column) for column in zip(*rows, strict=True)]

    # The batch goes in by binary COPY (psycopg's C dumpers; the array parameters of `_UNNEST` are dumped value by
    # value in Python, which was a third of the write time), into a temporary table emptied at every commit, and
    # from there into `counts` with the same ON CONFLICT DO NOTHING RETURNING as everywhere else.
    _STAGE = (
        "CREATE TEMP TABLE IF NOT EXISTS counts_in (device_id TEXT, camera_id TEXT, outbox_id TEXT, seq BIGINT, "
        "session BIGINT, ts DOUBLE PRECISION, frame BIGINT, count INTEGER, unique_count INTEGER, frames INTEGER, "
        "count_sum DOUBLE PRECISION, count_max INTEGER, historical BOOLEAN, model TEXT, "
        "received_at DOUBLE PRECISION) ON COMMIT DELETE ROWS"
    )
    _STAGE_TYPES = (
        "text",
        "text",
        "text",
        "int8",
        "int8",
        "float8",
        "int8",
        "int4",
        "int4",
        "int4",
        "float8",
        "int4",
        "bool",
        "text",
        "float8",
    )
    _COLUMNS = (
        "device_id, camera_id, outbox_id, seq, session, ts, frame, count, unique_count, frames, count_sum, count_max, "
        "historical, model, received_at"
    )

    def _insert_counts(self, cur: Any, counts: list[CountRecord]) -> list[tuple[int, CountRecord]]:
        by_key = {(c.device_id, c.outbox_id, c.seq): c for c in counts}
        if not by_key:
            return []
        if not self._staged:
            cur.execute(self._STAGE)  # once per connection: a temporary table lives as long as the session
        with cur.copy(f"COPY counts_in ({self._COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(self._STAGE_TYPES)
            for c in by_key.values():
                copy.write_row(_count_row(c, self._bool))
        cur.execute(
            f"INSERT INTO counts ({self._COLUMNS}) SELECT {self._COLUMNS} FROM counts_in "
            "ON CONFLICT (device_id, outbox_id, seq) DO NOTHING RETURNING id, device_id, outbox_id, seq"
        )
        # One call per transaction (`write`): the rows leave `counts_in` at its commit or rollback.
        new = [(int(row_id), by_key[(d, o, int(seq))]) for row_id, d, o, seq in cur.fetchall()]
        self._staged = True
        new.sort(key=lambda item: item[0])
        return new

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self._lock:
            try:
                with self._writer.transaction(), self._writer.cursor() as cur:
                    yield cur
            except BaseException:
                self._staged = False  # a rollback takes a `counts_in` created in this transaction with it
                raise

    def _reader(self) -> Any:
        return self._readers.get().cursor()

    def close(self) -> None:
        self._readers.close()
        with self._lock:
            self._writer.close()


def _redact(url: str) -> str:
    """The URL without its password, for error messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)

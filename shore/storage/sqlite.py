"""SQLite engine: one file in WAL mode, the embedded default (nothing to install, readers never block the writer)."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shore.storage.base import SqlStorage, StorageError, ThreadLocalConnections

logger = logging.getLogger(__name__)

DDL = """
CREATE TABLE IF NOT EXISTS counts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL, camera_id TEXT NOT NULL, outbox_id TEXT NOT NULL, seq INTEGER NOT NULL,
    session INTEGER NOT NULL, ts REAL NOT NULL, frame INTEGER NOT NULL, count INTEGER NOT NULL,
    unique_count INTEGER NOT NULL, frames INTEGER NOT NULL, count_sum REAL NOT NULL, count_max INTEGER NOT NULL,
    historical INTEGER NOT NULL, model TEXT, received_at REAL NOT NULL,
    UNIQUE (device_id, outbox_id, seq)
);
CREATE INDEX IF NOT EXISTS counts_ts ON counts (ts);
CREATE INDEX IF NOT EXISTS counts_camera_ts ON counts (device_id, camera_id, ts);
CREATE TABLE IF NOT EXISTS minutes (
    device_id TEXT NOT NULL, camera_id TEXT NOT NULL, session INTEGER NOT NULL, minute INTEGER NOT NULL,
    frames INTEGER NOT NULL, count_sum REAL NOT NULL, count_max INTEGER NOT NULL,
    unique_max INTEGER NOT NULL, unique_min INTEGER NOT NULL,
    PRIMARY KEY (device_id, camera_id, session, minute)
);
CREATE INDEX IF NOT EXISTS minutes_chart ON minutes (device_id, camera_id, minute);
CREATE INDEX IF NOT EXISTS minutes_minute ON minutes (minute);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY, first_seen REAL, status TEXT, status_at REAL, last_seen REAL,
    model TEXT, model_at REAL, stats TEXT, stats_at REAL, update_state TEXT, update_state_at REAL,
    last_result TEXT, last_result_at REAL
);
CREATE TABLE IF NOT EXISTS cameras (
    device_id TEXT NOT NULL, camera_id TEXT NOT NULL, status TEXT, status_at REAL, last_seen REAL,
    last_ts REAL, last_seq INTEGER, last_count INTEGER, last_unique INTEGER, session INTEGER,
    last_count_id INTEGER NOT NULL DEFAULT 0, model TEXT,
    PRIMARY KEY (device_id, camera_id)
);
CREATE TABLE IF NOT EXISTS tracks (
    device_id TEXT NOT NULL, camera_id TEXT NOT NULL, session INTEGER NOT NULL, track_id INTEGER NOT NULL,
    event TEXT NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL, frames INTEGER NOT NULL,
    max_score REAL NOT NULL,
    PRIMARY KEY (device_id, camera_id, session, track_id, event)
);
CREATE TABLE IF NOT EXISTS surveys (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, start_ts REAL NOT NULL, end_ts REAL NOT NULL,
    device_id TEXT, camera_id TEXT, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rejects (
    reason TEXT PRIMARY KEY, n INTEGER NOT NULL, last_topic TEXT, last_at REAL
);
"""


class SqliteStorage(SqlStorage):
    engine = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = self._connect()
            self._writer.executescript(DDL)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open SQLite database {self.path}: {exc}") from exc
        self._lock = threading.Lock()
        self._readers = ThreadLocalConnections(self._connect)

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN ourselves, so a read never holds a transaction open.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a killed process (the case we test); only a power cut may lose the last
        # commits, and the devices' outboxes still hold what was not acknowledged.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self._lock:
            cur = self._writer.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")
            finally:
                cur.close()

    def _reader(self) -> Any:
        return self._readers.get().cursor()

    def close(self) -> None:
        self._readers.close()
        with self._lock:
            self._writer.close()

"""Durable store-and-forward outbox for MQTT messages (SQLite in WAL mode).

A message is committed here before it is handed to the MQTT client and deleted only after the broker acknowledged
it, so neither a broker outage nor a power cut loses it (a subscriber may see a duplicate; `(device_id, seq)`
deduplicates). The device's `seq` and `session` counters live in the same database and are advanced in the same
transaction as the insert, so a seq can never be handed out twice or skipped by a crash.

The outbox is bounded by message count and age; the oldest messages are dropped first, and every drop is counted
(persistently) so that it can be reported in `stats`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters(name, value) VALUES ('seq', 0), ('session', 0), ('dropped', 0);
"""


class OutboxError(RuntimeError):
    """The outbox cannot be opened or used."""


class OutboxLockedError(OutboxError):
    """Another process already owns this outbox (two agents must not share one seq counter)."""


@dataclass(frozen=True)
class OutboxRecord:
    id: int
    seq: int | None
    topic: str
    payload: bytes
    created_at: float


class Outbox:
    """SQLite-backed FIFO of (topic, payload) with the device's persistent `seq` / `session` counters.

    Thread-safe: one connection guarded by a lock (SQLite serialises writers anyway).

    `synchronous="FULL"` fsyncs the WAL on every commit and survives power loss; `"NORMAL"` survives a killed
    process but may lose the last commits on power loss, and is much faster on slow flash.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_messages: int = 100_000,
        max_age_s: float = 7 * 24 * 3600.0,
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
    ) -> None:
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, got {max_messages}")
        if max_age_s <= 0:
            raise ValueError(f"max_age_s must be > 0, got {max_age_s}")
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', got {synchronous!r}")
        self.path = Path(path)
        self.max_messages = int(max_messages)
        self.max_age_s = float(max_age_s)
        self.synchronous = synchronous
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._lock_file = self._acquire_process_lock()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(f"{self.path}: SQLite refused WAL mode (got {mode!r}); is it on a network share?")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            self._release_process_lock()
            raise OutboxError(f"{self.path}: cannot open outbox database: {exc}") from exc
        self._seq = self._counter("seq")
        self._session = self._counter("session")
        self._dropped = self._counter("dropped")
        self._depth = int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
        self._closed = False
        logger.info(
            "outbox %s: %d message(s) waiting, last seq %d, session %d", self.path, self._depth, self._seq,
            self._session,
        )

    # -- process lock -------------------------------------------------------------------------------------------
    def _acquire_process_lock(self):
        lock_file = open(f"{self.path}.lock", "a+")  # held for the object's lifetime
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            lock_file.close()
            raise OutboxLockedError(f"{self.path} is in use by another process (lock {lock_file.name})") from exc
        return lock_file

    def _release_process_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing the descriptor releases the flock
            self._lock_file = None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT under the lock; SQLite failures (disk full, I/O error) become OutboxError."""
        self._check_open()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise OutboxError(f"{self.path}: {exc}") from exc
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise OutboxError(f"{self.path}: {exc}") from exc
            raise

    # -- counters -------------------------------------------------------------------------------------------
    def _counter(self, name: str) -> int:
        return int(self._db.execute("SELECT value FROM counters WHERE name=?", (name,)).fetchone()[0])

    @property
    def session(self) -> int:
        """The current session number (0 until `start_session` was called)."""
        return self._session

    @property
    def last_seq(self) -> int:
        """The last seq handed out (persisted)."""
        return self._seq

    @property
    def depth(self) -> int:
        """Messages stored and not yet acknowledged."""
        return self._depth

    @property
    def dropped_total(self) -> int:
        """Messages ever dropped by the size/age bound (persisted across restarts)."""
        return self._dropped

    def start_session(self) -> int:
        """Advance and return the session counter; call once per agent start."""
        with self._lock:
            with self._transaction():
                self._db.execute("UPDATE counters SET value = value + 1 WHERE name='session'")
                session = self._counter("session")
            self._session = session
            return session

    # -- messages -------------------------------------------------------------------------------------------
    def append(
        self,
        topic: str,
        make_payload: Callable[[int | None], bytes],
        *,
        sequenced: bool = True,
        now: float | None = None,
    ) -> OutboxRecord:
        """Store one message durably and return it.

        `make_payload(seq)` builds the bytes once the seq is known (seq is None when `sequenced` is False). The seq
        increment, the insert and any drop-oldest happen in one transaction: on return the message is committed.
        """
        created = time.time() if now is None else now
        with self._lock:
            with self._transaction():
                seq: int | None = None
                if sequenced:
                    seq = self._seq + 1
                    self._db.execute("UPDATE counters SET value=? WHERE name='seq'", (seq,))
                payload = make_payload(seq)
                cur = self._db.execute(
                    "INSERT INTO messages(seq, topic, payload, created_at) VALUES (?, ?, ?, ?)",
                    (seq, topic, payload, created),
                )
                row_id = int(cur.lastrowid)
                over = self._depth + 1 - self.max_messages
                dropped = self._drop_oldest(over) if over > 0 else 0
            if seq is not None:
                self._seq = seq
            self._depth += 1 - dropped
            self._dropped += dropped
        if dropped:
            logger.warning("outbox full (%d messages): dropped the %d oldest", self.max_messages, dropped)
        return OutboxRecord(row_id, seq, topic, payload, created)

    def _drop_oldest(self, n: int) -> int:
        cur = self._db.execute("DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT ?)", (n,))
        dropped = cur.rowcount
        self._db.execute("UPDATE counters SET value = value + ? WHERE name='dropped'", (dropped,))
        return dropped

    def enforce_age(self, now: float | None = None) -> int:
        """Drop messages older than `max_age_s`; return how many were dropped."""
        cutoff = (time.time() if now is None else now) - self.max_age_s
        with self._lock:
            with self._transaction():
                cur = self._db.execute("DELETE FROM messages WHERE created_at < ?", (cutoff,))
                dropped = cur.rowcount
                if dropped:
                    self._db.execute("UPDATE counters SET value = value + ? WHERE name='dropped'", (dropped,))
            self._depth -= dropped
            self._dropped += dropped
        if dropped:
            logger.warning("outbox: dropped %d message(s) older than %.0f s", dropped, self.max_age_s)
        return dropped

    def read_after(self, after_id: int, limit: int) -> list[OutboxRecord]:
        """Up to `limit` stored messages with id > `after_id`, oldest first."""
        with self._lock:
            self._check_open()
            try:
                rows = self._db.execute(
                    "SELECT id, seq, topic, payload, created_at FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                    (after_id, limit),
                ).fetchall()
            except sqlite3.Error as exc:
                raise OutboxError(f"{self.path}: {exc}") from exc
        return [OutboxRecord(int(r[0]), r[1], r[2], bytes(r[3]), float(r[4])) for r in rows]

    def max_id(self) -> int:
        """Highest stored message id (0 when empty)."""
        with self._lock:
            self._check_open()
            return int(self._db.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()[0])

    def delete(self, ids: Iterable[int]) -> int:
        """Remove acknowledged messages; ids already gone (dropped by policy) are ignored."""
        id_list = list(ids)
        if not id_list:
            return 0
        removed = 0
        with self._lock:
            self._check_open()
            # A lost delete only means a duplicate after a power cut (dedup by seq), so it need not wait for fsync.
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                with self._transaction():
                    for start in range(0, len(id_list), 500):  # SQLite's bound-parameter limit
                        chunk = id_list[start:start + 500]
                        marks = ",".join("?" * len(chunk))
                        removed += self._db.execute(f"DELETE FROM messages WHERE id IN ({marks})", chunk).rowcount
            finally:
                self._db.execute(f"PRAGMA synchronous={self.synchronous}")
            self._depth -= removed
        return removed

    # -- lifecycle ------------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise OutboxError(f"{self.path}: outbox is closed")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.DatabaseError as exc:  # a checkpoint is an optimisation; the WAL stays valid
                logger.debug("outbox checkpoint skipped: %s", exc)
            self._db.close()
            self._release_process_lock()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

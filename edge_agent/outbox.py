"""Durable store-and-forward outbox for MQTT messages (SQLite in WAL mode).

A message is committed here before it is handed to the MQTT client and deleted only after the broker acknowledged
it, so neither a broker outage nor a power cut loses it (a subscriber may see a duplicate; `(device_id, outbox_id,
seq)` deduplicates). The device's `seq` and `session` counters live in the same database and are advanced in the
same transaction as the insert, so a seq can never be handed out twice or skipped by a crash.

`outbox_id` is a random id created with the database: a rebuilt outbox (or a second device flashed from the same
image) restarts `seq` at 1 under a new `outbox_id`, so a subscriber never mistakes its messages for duplicates.

The outbox is bounded by message count and age; the oldest messages are dropped first, and every drop is counted
(persistently) so that it can be reported in `stats`. Age is measured on the boot clock (CLOCK_BOOTTIME) for rows
written since this boot, so a wall clock that jumps (a device without RTC that syncs NTP late) cannot age-drop them;
rows of an earlier boot are aged by wall clock only when both their time stamp and the current time are plausible.

`append_many` stores many messages in one transaction (one fsync): `edge_agent.outbox_writer` uses it for group
commit so the hot path never waits for the disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

# Row ids are handed out by the Outbox itself (monotonic within a process, continuing from MAX(id) at open), so
# the table needs no AUTOINCREMENT bookkeeping (an extra sqlite_sequence page written per commit). `boot` is the
# outbox's number for the boot the row was written in, `boot_s` the CLOCK_BOOTTIME seconds at that moment.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    seq INTEGER,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL,
    boot INTEGER,
    boot_s REAL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT OR IGNORE INTO counters(name, value) VALUES ('seq', 0), ('session', 0), ('dropped', 0), ('boot', 0);
"""

# Wall-clock time stamps before this (2025-01-01T00:00:00Z) are taken as "the clock was not set yet": a device
# without RTC boots at 1970 or at its image's build date. Such rows are never aged by wall clock.
PLAUSIBLE_WALL_CLOCK_FROM = 1_735_689_600.0
# A stored time stamp further than this in the future of the current clock is implausible as well.
_FUTURE_SLACK_S = 24 * 3600.0
_BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


def current_boot_id() -> str:
    """This boot's id (Linux); elsewhere a per-process id, which only makes wall-clock ageing more conservative."""
    try:
        return _BOOT_ID_PATH.read_text().strip()
    except OSError:
        return f"process-{os.getpid()}-{time.time_ns()}"


def boot_seconds() -> float:
    """Seconds since boot including suspend (CLOCK_BOOTTIME): unaffected by wall-clock steps."""
    clock = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
    return time.clock_gettime(clock)


def is_plausible_wall_time(ts: float, now: float | None = None) -> bool:
    """A wall-clock time stamp that can be trusted for ageing (the clock was set, and it is not in the future)."""
    now = time.time() if now is None else now
    return ts >= PLAUSIBLE_WALL_CLOCK_FROM and ts <= now + _FUTURE_SLACK_S


class OutboxError(RuntimeError):
    """The outbox cannot be opened or used."""


class OutboxLockedError(OutboxError):
    """Another process already owns this outbox (two agents must not share one seq counter)."""


@dataclass(frozen=True)
class PendingMessage:
    """One message for `Outbox.append_many`: the payload is built once its seq is known."""

    topic: str
    make_payload: Callable[[int | None], bytes]
    sequenced: bool = True


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
        max_pages: int | None = None,
        boot_id: str | None = None,
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
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutboxError(f"{self.path}: cannot create its directory: {exc.strerror or exc}") from exc
        self._lock = threading.RLock()
        self._lock_file = self._acquire_process_lock()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(f"{self.path}: SQLite refused WAL mode (got {mode!r}); is it on a network share?")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            if max_pages is not None:
                # A hard size cap in database pages (also how tests get a real "disk full" without a small fs).
                self._db.execute(f"PRAGMA max_page_count={int(max_pages)}")
            self._db.executescript(_SCHEMA)
            self._migrate()
            self.outbox_id = self._ensure_outbox_id()
            self._boot = self._ensure_boot(boot_id or current_boot_id())
        except sqlite3.DatabaseError as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._release_process_lock()
            raise OutboxError(f"{self.path}: cannot open outbox database: {exc}") from exc
        self._seq = self._counter("seq")
        self._session = self._counter("session")
        self._dropped = self._counter("dropped")
        self._depth = int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
        self._next_id = int(self._db.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()[0]) + 1
        self._closed = False
        logger.info(
            "outbox %s (id %s): %d message(s) waiting, last seq %d, session %d",
            self.path,
            self.outbox_id,
            self._depth,
            self._seq,
            self._session,
        )

    def _migrate(self) -> None:
        """Add the boot-clock columns to an outbox created by an older agent (its rows count as an earlier boot)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(messages)")}
        for name, kind in (("boot", "INTEGER"), ("boot_s", "REAL")):
            if name not in columns:
                self._db.execute(f"ALTER TABLE messages ADD COLUMN {name} {kind}")
        self._db.execute("INSERT OR IGNORE INTO counters(name, value) VALUES ('boot', 0)")

    def _ensure_outbox_id(self) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE name='outbox_id'").fetchone()
        if row is not None:
            return str(row[0])
        # Created with the database (or on first open by this version): never copied from anywhere else.
        new_id = uuid.uuid4().hex
        self._db.execute("INSERT INTO meta(name, value) VALUES ('outbox_id', ?)", (new_id,))
        return new_id

    def _ensure_boot(self, boot_id: str) -> int:
        """The outbox's number for this boot: advanced whenever the kernel's boot id differs from the stored one."""
        row = self._db.execute("SELECT value FROM meta WHERE name='boot_id'").fetchone()
        boot = self._counter("boot")
        if row is None or row[0] != boot_id:
            boot += 1
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("UPDATE counters SET value=? WHERE name='boot'", (boot,))
            self._db.execute("INSERT OR REPLACE INTO meta(name, value) VALUES ('boot_id', ?)", (boot_id,))
            self._db.execute("COMMIT")
        return boot

    # -- process lock -------------------------------------------------------------------------------------------
    def _acquire_process_lock(self):
        try:
            lock_file = open(f"{self.path}.lock", "a+")  # held for the object's lifetime
        except OSError as exc:
            raise OutboxError(f"{self.path}: cannot create its lock file: {exc.strerror or exc}") from exc
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
    def boot(self) -> int:
        """The outbox's number for the current boot (advances when the kernel boot id changes)."""
        return self._boot

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
        boot_s: float | None = None,
    ) -> OutboxRecord:
        """Store one message durably and return it.

        `make_payload(seq)` builds the bytes once the seq is known (seq is None when `sequenced` is False). The seq
        increment, the insert and any drop-oldest happen in one transaction: on return the message is committed.
        """
        return self.append_many([PendingMessage(topic, make_payload, sequenced)], now=now, boot_s=boot_s)[0]

    def append_many(
        self,
        messages: Sequence[PendingMessage],
        *,
        now: float | None = None,
        boot_s: float | None = None,
        delete_ids: Sequence[int] = (),
    ) -> list[OutboxRecord]:
        """Store several messages in one transaction (one fsync) and return them, in order.

        `delete_ids` (acknowledged rows) are deleted in the same transaction. All or nothing: if the disk is full
        or a payload builder raises, nothing is stored or deleted and no seq is consumed.
        """
        if not messages and not delete_ids:
            return []
        created = time.time() if now is None else now
        booted = boot_seconds() if boot_s is None else boot_s
        records: list[OutboxRecord] = []
        with self._lock:
            with self._transaction():
                removed = self._delete_in_transaction(delete_ids)
                seq = self._seq
                row_id = self._next_id
                rows = []
                for message in messages:
                    this_seq: int | None = None
                    if message.sequenced:
                        seq += 1
                        this_seq = seq
                    payload = message.make_payload(this_seq)
                    rows.append((row_id, this_seq, message.topic, payload, created, self._boot, booted))
                    records.append(OutboxRecord(row_id, this_seq, message.topic, payload, created))
                    row_id += 1
                if rows:
                    self._db.executemany(
                        "INSERT INTO messages(id, seq, topic, payload, created_at, boot, boot_s)"
                        " VALUES (?,?,?,?,?,?,?)",
                        rows,
                    )
                if seq != self._seq:
                    self._db.execute("UPDATE counters SET value=? WHERE name='seq'", (seq,))
                over = self._depth + len(rows) - self.max_messages
                dropped = self._drop_oldest(over) if over > 0 else 0
            self._seq = seq
            self._next_id = row_id
            self._depth += len(rows) - dropped - removed
            self._dropped += dropped
        if dropped:
            logger.warning("outbox full (%d messages): dropped the %d oldest", self.max_messages, dropped)
        return records

    def _drop_oldest(self, n: int) -> int:
        cur = self._db.execute("DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT ?)", (n,))
        dropped = cur.rowcount
        self._db.execute("UPDATE counters SET value = value + ? WHERE name='dropped'", (dropped,))
        return dropped

    def enforce_age(self, now: float | None = None, boot_s: float | None = None) -> int:
        """Drop messages older than `max_age_s`; return how many were dropped.

        Rows written since this boot are aged by the boot clock, which a wall-clock jump does not move. Rows of an
        earlier boot are aged by wall clock, but only when both the current time and the row's time stamp are
        plausible (see `is_plausible_wall_time`); otherwise they are kept: dropping counts on a guess is worse
        than keeping them a little longer.
        """
        wall = time.time() if now is None else now
        booted = boot_seconds() if boot_s is None else boot_s
        with self._lock:
            with self._transaction():
                cur = self._db.execute(
                    "DELETE FROM messages WHERE boot = ? AND boot_s IS NOT NULL AND boot_s < ?",
                    (self._boot, booted - self.max_age_s),
                )
                dropped = cur.rowcount
                if wall >= PLAUSIBLE_WALL_CLOCK_FROM:
                    cur = self._db.execute(
                        "DELETE FROM messages WHERE (boot IS NULL OR boot != ? OR boot_s IS NULL)"
                        " AND created_at >= ? AND created_at < ?",
                        (self._boot, PLAUSIBLE_WALL_CLOCK_FROM, wall - self.max_age_s),
                    )
                    dropped += cur.rowcount
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
                    removed = self._delete_in_transaction(id_list)
            finally:
                self._db.execute(f"PRAGMA synchronous={self.synchronous}")
            self._depth -= removed
        return removed

    def _delete_in_transaction(self, ids: Sequence[int]) -> int:
        removed = 0
        for start in range(0, len(ids), 500):  # SQLite's bound-parameter limit
            chunk = list(ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            removed += self._db.execute(f"DELETE FROM messages WHERE id IN ({marks})", chunk).rowcount
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

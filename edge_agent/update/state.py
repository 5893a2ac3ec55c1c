"""The persisted update state machine: one enum of states, one SQLite row per update, every transition logged.

Rows live in the device-state database (``state_dir/device-state.sqlite3``, `synchronous=FULL`) beside the
anti-rollback floor, in tables of their own. A transition is committed to disk *before* the step it names takes
effect (Mender's rule), so after kill -9 or a power cut the row says which step to re-enter, and each step is
written to be re-entered (`edge_agent.update.manager`).

    downloading -> verifying -> staging -> checking -> swapping -> probation -> committed
         \\____________\\___________\\__________\\______> failed       \\__________> rolled_back
                                                    swapping --------------------> rolled_back
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum

from edge_agent.device_state import STATE_DB_NAME, DeviceStateError, ensure_state_dir

logger = logging.getLogger(__name__)


class UpdateState(str, Enum):
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    STAGING = "staging"
    CHECKING = "checking"
    SWAPPING = "swapping"
    PROBATION = "probation"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({UpdateState.COMMITTED, UpdateState.ROLLED_BACK, UpdateState.FAILED})
ALLOWED: dict[UpdateState, frozenset[UpdateState]] = {
    UpdateState.DOWNLOADING: frozenset({UpdateState.VERIFYING, UpdateState.FAILED}),
    UpdateState.VERIFYING: frozenset({UpdateState.STAGING, UpdateState.FAILED}),
    UpdateState.STAGING: frozenset({UpdateState.CHECKING, UpdateState.FAILED}),
    UpdateState.CHECKING: frozenset({UpdateState.SWAPPING, UpdateState.FAILED}),
    # A swap that cannot complete puts the previous link back: rolled_back (nothing new ever ran) or failed.
    UpdateState.SWAPPING: frozenset({UpdateState.PROBATION, UpdateState.ROLLED_BACK, UpdateState.FAILED}),
    UpdateState.PROBATION: frozenset({UpdateState.COMMITTED, UpdateState.ROLLED_BACK}),
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS model_update (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    rollback INTEGER NOT NULL,
    digest TEXT NOT NULL,
    announcement BLOB NOT NULL,
    created_at TEXT NOT NULL,
    state TEXT NOT NULL,
    previous_target TEXT,
    progress INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL,
    restarts INTEGER NOT NULL DEFAULT 0,
    error_code TEXT,
    error TEXT,
    started_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    baseline_fps REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS model_update_digest ON model_update (digest);
CREATE TABLE IF NOT EXISTS model_update_transition (
    update_id INTEGER NOT NULL REFERENCES model_update (id),
    state TEXT NOT NULL,
    at REAL NOT NULL,
    error_code TEXT,
    error TEXT
);
"""


def _add_missing_columns(db: sqlite3.Connection) -> None:
    # A state database written by an older agent lacks the columns added since; CREATE TABLE IF NOT EXISTS
    # leaves such a table as it is.
    have = {row[1] for row in db.execute("PRAGMA table_info(model_update)")}
    if "baseline_fps" not in have:
        db.execute("ALTER TABLE model_update ADD COLUMN baseline_fps REAL")


class TransitionError(RuntimeError):
    """A transition the state machine does not allow (a bug, not bad input)."""


@dataclass(frozen=True)
class UpdateRecord:
    """One update as persisted."""

    id: int
    name: str
    version: int
    rollback: bool
    digest: str  # sha256 of the signed announcement bytes
    announcement: bytes  # the signed canonical JSON (re-verified on resume; the DB is not a trust anchor)
    created_at: datetime
    state: UpdateState
    previous_target: str | None  # where `current` pointed before the swap (set at swapping)
    progress: int
    size: int
    restarts: int
    error_code: str | None
    error: str | None
    started_at: float
    updated_at: float
    # The previous model's fps just before the swap: probation compares against it, after a restart too.
    baseline_fps: float | None = None


class UpdateStore:
    """Update rows in the device-state database (thread-safe; one connection, `synchronous=FULL`)."""

    def __init__(self, state_dir: str | os.PathLike) -> None:
        self.path = ensure_state_dir(state_dir) / STATE_DB_NAME
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            _add_missing_columns(self._db)
        except sqlite3.Error as exc:
            raise DeviceStateError(f"update state {self.path}: {exc}") from exc

    def create(
        self,
        *,
        name: str,
        version: int,
        rollback: bool,
        digest: str,
        announcement: bytes,
        created_at: datetime,
        size: int,
    ) -> UpdateRecord:
        """Insert a new update in `downloading`; refuses while another update is not finished."""
        now = time.time()
        with self._tx() as db:
            active = db.execute(
                "SELECT id, name, version FROM model_update WHERE state NOT IN (?, ?, ?)",
                tuple(s.value for s in TERMINAL),
            ).fetchone()
            if active is not None:
                raise TransitionError(f"update #{active[0]} ({active[1]} v{active[2]}) is still in progress")
            try:
                cur = db.execute(
                    "INSERT INTO model_update (name, version, rollback, digest, announcement, created_at, state, "
                    "size, started_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        version,
                        int(rollback),
                        digest,
                        announcement,
                        created_at.isoformat(),
                        UpdateState.DOWNLOADING.value,
                        size,
                        now,
                        now,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise TransitionError(f"announcement {digest[:12]} was already handled") from exc
            update_id = int(cur.lastrowid or 0)
            db.execute(
                "INSERT INTO model_update_transition (update_id, state, at) VALUES (?, ?, ?)",
                (update_id, UpdateState.DOWNLOADING.value, now),
            )
        logger.info("update #%d: %s v%d -> %s", update_id, name, version, UpdateState.DOWNLOADING.value)
        return self.get(update_id)

    def transition(
        self,
        update_id: int,
        state: UpdateState,
        *,
        error_code: str | None = None,
        error: str | None = None,
        previous_target: str | None = None,
    ) -> UpdateRecord:
        """Persist ``state`` for the update (durably, before the caller acts on it)."""
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT state FROM model_update WHERE id = ?", (update_id,)).fetchone()
            if row is None:
                raise TransitionError(f"no update #{update_id}")
            current = UpdateState(row[0])
            if state not in ALLOWED.get(current, frozenset()):
                raise TransitionError(f"update #{update_id}: {current.value} -> {state.value} is not allowed")
            db.execute(
                "UPDATE model_update SET state = ?, updated_at = ?, error_code = COALESCE(?, error_code), "
                "error = COALESCE(?, error), previous_target = COALESCE(?, previous_target) WHERE id = ?",
                (state.value, now, error_code, error, previous_target, update_id),
            )
            db.execute(
                "INSERT INTO model_update_transition (update_id, state, at, error_code, error) VALUES (?, ?, ?, ?, ?)",
                (update_id, state.value, now, error_code, error),
            )
        logger.info("update #%d -> %s%s", update_id, state.value, f" ({error_code}: {error})" if error else "")
        return self.get(update_id)

    def set_progress(self, update_id: int, done: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE model_update SET progress = ?, updated_at = ? WHERE id = ?", (done, time.time(), update_id)
            )

    def set_baseline_fps(self, update_id: int, fps: float) -> None:
        """Persist the previous model's fps measured just before the swap (probation's yardstick)."""
        with self._tx() as db:
            db.execute("UPDATE model_update SET baseline_fps = ? WHERE id = ?", (fps, update_id))

    def count_restart(self, update_id: int) -> int:
        """Record one more agent start while this update is active; returns the new count."""
        with self._tx() as db:
            db.execute("UPDATE model_update SET restarts = restarts + 1 WHERE id = ?", (update_id,))
            row = db.execute("SELECT restarts FROM model_update WHERE id = ?", (update_id,)).fetchone()
        return int(row[0])

    def get(self, update_id: int) -> UpdateRecord:
        rows = self._select("WHERE id = ?", (update_id,))
        if not rows:
            raise TransitionError(f"no update #{update_id}")
        return rows[0]

    def active(self) -> UpdateRecord | None:
        """The one update not yet committed, rolled back or failed (None: idle)."""
        rows = self._select("WHERE state NOT IN (?, ?, ?) ORDER BY id DESC", tuple(s.value for s in TERMINAL))
        return rows[0] if rows else None

    def by_digest(self, digest: str) -> UpdateRecord | None:
        rows = self._select("WHERE digest = ?", (digest,))
        return rows[0] if rows else None

    def latest(self) -> UpdateRecord | None:
        rows = self._select("ORDER BY id DESC LIMIT 1", ())
        return rows[0] if rows else None

    def last_created_at(self, name: str) -> datetime | None:
        """`created_at` of the newest announcement acted on for ``name`` (replays of older ones are refused)."""
        with self._lock:
            row = self._db.execute(
                "SELECT created_at FROM model_update WHERE name = ? ORDER BY created_at DESC LIMIT 1", (name,)
            ).fetchone()
        return None if row is None else datetime.fromisoformat(row[0]).astimezone(timezone.utc)

    def transitions(self, update_id: int) -> list[UpdateState]:
        with self._lock:
            rows = self._db.execute(
                "SELECT state FROM model_update_transition WHERE update_id = ? ORDER BY rowid", (update_id,)
            ).fetchall()
        return [UpdateState(r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _select(self, where: str, args: tuple) -> list[UpdateRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, name, version, rollback, digest, announcement, created_at, state, previous_target, "
                "progress, size, restarts, error_code, error, started_at, updated_at, baseline_fps "
                f"FROM model_update {where}",
                args,
            ).fetchall()
        return [
            UpdateRecord(
                id=r[0],
                name=r[1],
                version=r[2],
                rollback=bool(r[3]),
                digest=r[4],
                announcement=bytes(r[5]),
                created_at=datetime.fromisoformat(r[6]).astimezone(timezone.utc),
                state=UpdateState(r[7]),
                previous_target=r[8],
                progress=r[9],
                size=r[10],
                restarts=r[11],
                error_code=r[12],
                error=r[13],
                started_at=r[14],
                updated_at=r[15],
                baseline_fps=r[16],
            )
            for r in rows
        ]

    def _tx(self) -> _Transaction:
        return _Transaction(self)


class _Transaction:
    def __init__(self, store: UpdateStore) -> None:
        self.store = store

    def __enter__(self) -> sqlite3.Connection:
        self.store._lock.acquire()
        try:
            self.store._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self.store._lock.release()
            raise DeviceStateError(f"update state {self.store.path}: {exc}") from exc
        return self.store._db

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:
            self.store._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self.store._lock.release()

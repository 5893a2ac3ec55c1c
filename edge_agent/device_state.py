"""Device-local state that no model bundle can write: anti-rollback floors, versions known bad, device secrets.

Lives in its own directory (`AgentConfig.state_dir`, default ``/var/lib/starfish/state``, created 0700), apart
from any bundle, so a bundle — even a validly signed old one — can never lower what the device has accepted.

* ``floor(name)`` is the highest version of model ``name`` this device has committed; start-up and every swap
  refuse an older one unless an explicit, logged rollback is asked (`check_rollback`).
* ``raise_floor(name, version)`` is called only at a commit point (a successful start, or the end of an update's
  probation); it never lowers the floor.
* ``mark_bad(name, version, reason)`` / ``is_bad`` remember versions that failed, so they are not retried.
* ``device_secret(state_dir, name)`` is a random per-device key (created 0600), e.g. the one that authenticates
  cached TensorRT engines.

Storage is SQLite (`synchronous=FULL`, one transaction per change): atomic across power cuts and safe between
processes, and a later update manager can add its own tables to the same file.
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import stat
import threading
import time
from pathlib import Path

from edge_agent.bundle.errors import VersionError
from edge_agent.durable import fsync_path

logger = logging.getLogger(__name__)

STATE_DB_NAME = "device-state.sqlite3"
ENV_STATE_DIR = "STARFISH_STATE_DIR"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS model_floor (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    committed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS bad_version (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    reason TEXT NOT NULL,
    marked_at REAL NOT NULL,
    PRIMARY KEY (name, version)
);
"""


class DeviceStateError(RuntimeError):
    """The device state directory, database or a device secret is unusable (permissions, corruption...)."""


class RollbackRefused(VersionError):
    """A bundle is older than this device's anti-rollback floor (or known bad) and no rollback was asked."""


def default_state_dir() -> Path:
    """For tools outside the agent (benchmarks, `starfish export tensorrt`): ``$STARFISH_STATE_DIR``, else
    ``$XDG_STATE_HOME/starfish``, else ``~/.local/state/starfish``."""
    if os.environ.get(ENV_STATE_DIR):
        return Path(os.environ[ENV_STATE_DIR])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "starfish"


def ensure_state_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (0700) if missing; refuse one that others could write (they could plant state)."""
    path = Path(path)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
    except OSError as exc:
        raise DeviceStateError(f"device state directory {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise DeviceStateError(f"device state directory {path} is not a directory")
    if info.st_mode & 0o022:
        raise DeviceStateError(
            f"device state directory {path} is writable by group or others (mode {stat.filemode(info.st_mode)}); "
            f"chmod 700 it"
        )
    return path


def device_secret(state_dir: str | os.PathLike, name: str, size: int = 32) -> bytes:
    """The device's random secret ``name`` (``state_dir/<name>.key``, 0600), created on first use."""
    path = ensure_state_dir(state_dir) / f"{name}.key"
    flags = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | flags, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise DeviceStateError(f"cannot create the device key {path}: {exc.strerror or exc}") from exc
    else:
        # Created 0600 by open itself: there is no moment at which others may read the key.
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(size))
            handle.flush()
            os.fsync(handle.fileno())
        fsync_path(path.parent)
        logger.info("created device key %s", path)
    try:
        fd = os.open(path, os.O_RDONLY | flags)
    except OSError as exc:
        raise DeviceStateError(f"cannot read the device key {path}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        key = handle.read(size + 1)
    if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o077 or info.st_uid != os.geteuid():
        raise DeviceStateError(f"device key {path} must be a regular file owned by this user with mode 0600")
    if len(key) != size:
        raise DeviceStateError(f"device key {path} holds {len(key)} bytes, expected {size}: delete it to recreate")
    return key


class DeviceState:
    """Anti-rollback floors and known-bad versions in ``state_dir/device-state.sqlite3`` (thread-safe)."""

    def __init__(self, state_dir: str | os.PathLike) -> None:
        self.path = ensure_state_dir(state_dir) / STATE_DB_NAME
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise DeviceStateError(f"device state {self.path}: {exc}") from exc

    def floor(self, name: str) -> int | None:
        """The highest committed version of ``name`` (None: none yet)."""
        row = self._query("SELECT version FROM model_floor WHERE name = ?", (name,))
        return None if row is None else int(row[0])

    def raise_floor(self, name: str, version: int) -> int:
        """Record ``version`` of ``name`` as committed; the floor only ever rises. Returns the floor now."""
        self._write(
            "INSERT INTO model_floor (name, version, committed_at) VALUES (?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET version = excluded.version, committed_at = excluded.committed_at "
            "WHERE excluded.version > model_floor.version",
            (name, int(version), time.time()),
        )
        floor = self.floor(name)
        assert floor is not None
        return floor

    def mark_bad(self, name: str, version: int, reason: str) -> None:
        """Remember that ``version`` of ``name`` failed (so it is not retried)."""
        self._write(
            "INSERT INTO bad_version (name, version, reason, marked_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(name, version) DO UPDATE SET reason = excluded.reason, marked_at = excluded.marked_at",
            (name, int(version), reason, time.time()),
        )

    def is_bad(self, name: str, version: int) -> bool:
        return self.bad_reason(name, version) is not None

    def bad_reason(self, name: str, version: int) -> str | None:
        row = self._query("SELECT reason FROM bad_version WHERE name = ? AND version = ?", (name, int(version)))
        return None if row is None else str(row[0])

    def check_rollback(self, name: str, version: int, *, allow_rollback: bool = False) -> None:
        """Raise `RollbackRefused` if ``version`` is below the floor of ``name`` or known bad, unless
        ``allow_rollback`` (then log a warning). The floor's own version (a restart) is always fine."""
        floor = self.floor(name)
        bad = self.bad_reason(name, version)
        problems = []
        if floor is not None and version < floor:
            problems.append(f"older than v{floor}, the highest version this device has accepted")
        if bad is not None:
            problems.append(f"marked bad on this device ({bad})")
        if not problems:
            return
        what = f"bundle {name} v{version} is " + " and ".join(problems)
        if allow_rollback:
            logger.warning("%s: accepted because an explicit rollback was asked", what)
            return
        raise RollbackRefused(f"{what}; ask for an explicit rollback (--allow-rollback) to run it")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> DeviceState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _query(self, sql: str, args: tuple) -> tuple | None:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchone()
            except sqlite3.Error as exc:
                raise DeviceStateError(f"device state {self.path}: {exc}") from exc

    def _write(self, sql: str, args: tuple) -> None:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.execute(sql, args)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise DeviceStateError(f"device state {self.path}: {exc}") from exc

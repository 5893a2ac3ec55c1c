"""The storage interface and its SQL implementation shared by both engines.

Tables (epoch seconds, UTC, everywhere; `minute` is the epoch second a minute starts):

* `counts` — every counts message once: `UNIQUE (device_id, outbox_id, seq)` is the dedupe key. Append-only.
* `minutes` — per (device, camera, session, minute) roll-up: frames, starfish-frames, max in view, unique range.
  Written in the same transaction as the raw rows it summarises, from the rows that were new, so a redelivered
  message never counts twice. Charts and survey totals read only this table (a 24 h chart of ten cameras is at
  most 14,400 rows whatever the frame rate).
* `devices`, `cameras` — latest retained state (status, model, stats, update state) and last-seen times.
* `tracks`, `surveys`, `rejects` (counted, ignored messages by reason).

An engine module supplies connections, its DDL and the few SQL spellings that differ (`GREATEST` vs `max`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from shore.records import (
    CountRecord,
    InfoRecord,
    Record,
    RejectRecord,
    SeenRecord,
    StatusRecord,
    TrackRecord,
    WriteResult,
)

logger = logging.getLogger(__name__)

_INSERT_CHUNK = 400  # rows per multi-row INSERT (15 parameters each stays far below SQLite's variable limit)
_COUNT_COLUMNS = (
    "device_id",
    "camera_id",
    "outbox_id",
    "seq",
    "session",
    "ts",
    "frame",
    "count",
    "unique_count",
    "frames",
    "count_sum",
    "count_max",
    "historical",
    "model",
    "received_at",
)
_INFO_COLUMNS = {"model": "model", "stats": "stats", "update": "update_state", "result": "last_result"}
_JSON_COLUMNS = ("model", "stats", "update_state", "last_result")


class StorageError(RuntimeError):
    """The database cannot be opened or used (message says which and why)."""


@dataclass(frozen=True)
class Totals:
    """Survey totals. `unique` sums, per camera and agent session, the rise of `unique_count` inside the window."""

    unique: int
    frames: int
    minutes: int
    starfish_per_minute: float
    mean_in_view: float
    first: float | None
    last: float | None
    cameras: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Survey:
    id: int
    name: str
    start: float
    end: float
    device_id: str | None
    camera_id: str | None
    created_at: float


class Storage(ABC):
    """What ingest and the web app need; nothing else. Safe to call from several threads."""

    engine: str

    @abstractmethod
    def write(self, records: Sequence[Record]) -> WriteResult:
        """Store a batch atomically (all or nothing). Duplicate counts are skipped and reported."""

    @abstractmethod
    def devices(self) -> list[dict[str, Any]]:
        """Every device with its latest state and its cameras."""

    @abstractmethod
    def series(self, device_id: str, start: float, end: float, camera_id: str | None = None) -> dict[str, Any]:
        """Per-minute points in [start, end): `{"cameras": {camera_id: {"minute": [...], "frames": [...],
        "mean": [...], "max": [...], "unique": [...]}}}` (columns aligned per camera)."""

    @abstractmethod
    def count_rows(
        self, start: float, end: float, device_id: str | None = None, camera_id: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Raw counts in [start, end) by capture time, oldest first (streamed)."""

    @abstractmethod
    def totals(
        self,
        start: float,
        end: float,
        device_id: str | None = None,
        camera_id: str | None = None,
        session: int | None = None,
    ) -> Totals: ...

    @abstractmethod
    def sessions(self, device_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Agent sessions seen (newest first) with their totals: each is a ready-made survey."""

    @abstractmethod
    def create_survey(
        self, name: str, start: float, end: float, device_id: str | None = None, camera_id: str | None = None
    ) -> Survey: ...

    @abstractmethod
    def surveys(self) -> list[Survey]: ...

    @abstractmethod
    def survey(self, survey_id: int) -> Survey | None: ...

    @abstractmethod
    def live_since(self, cursor: int) -> tuple[int, list[dict[str, Any]]]:
        """(newest count id, cameras whose latest count is newer than `cursor`)."""

    @abstractmethod
    def rejects(self) -> list[dict[str, Any]]: ...

    @abstractmethod
    def seqs(self, device_id: str) -> list[int]:
        """Every stored seq of a device, sorted (for checks: none missing, none twice)."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _rows(cur: Any) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


class SqlStorage(Storage):
    """Shared SQL (written with `?` placeholders; the PostgreSQL engine rewrites them)."""

    greatest = "max"
    least = "min"

    # -- engine hooks ---------------------------------------------------------------------------------------------
    @abstractmethod
    def _transaction(self) -> contextlib.AbstractContextManager[Any]:
        """A cursor inside one write transaction (serialised within the process)."""

    @abstractmethod
    def _reader(self) -> Any:
        """A cursor for reads on this thread's connection (autocommit)."""

    def _sql(self, sql: str) -> str:
        return sql

    def _bool(self, value: bool) -> Any:
        return value

    # -- write path -----------------------------------------------------------------------------------------------
    def write(self, records: Sequence[Record]) -> WriteResult:
        result = WriteResult()
        counts = [r for r in records if isinstance(r, CountRecord)]
        devices = {r.device_id for r in records if not isinstance(r, RejectRecord)}
        with self._transaction() as cur:
            if devices:
                now = time.time()
                cur.executemany(
                    self._sql(
                        "INSERT INTO devices (device_id, first_seen) VALUES (?, ?) ON CONFLICT (device_id) DO NOTHING"
                    ),
                    [(d, now) for d in sorted(devices)],
                )
            new = self._insert_counts(cur, counts)
            result.new_counts = len(new)
            result.duplicate_counts = len(counts) - len(new)
            self._roll_up(cur, new)
            self._latest(cur, new)
            for record in records:
                if isinstance(record, TrackRecord):
                    self._track(cur, record)
                elif isinstance(record, StatusRecord):
                    self._status(cur, record)
                elif isinstance(record, InfoRecord):
                    column = _INFO_COLUMNS[record.kind]
                    cur.execute(
                        self._sql(f"UPDATE devices SET {column} = ?, {column}_at = ? WHERE device_id = ?"),
                        (json.dumps(record.doc), record.at, record.device_id),
                    )
            self._seen(cur, records)
            rejects = [r for r in records if isinstance(r, RejectRecord)]
            for reason, group in _group(rejects, lambda r: r.reason).items():
                last = group[-1]
                cur.execute(
                    self._sql(
                        "INSERT INTO rejects (reason, n, last_topic, last_at) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (reason) DO UPDATE SET n = rejects.n + excluded.n, "
                        "last_topic = excluded.last_topic, last_at = excluded.last_at"
                    ),
                    (reason, len(group), last.topic, last.at),
                )
                result.reasons[reason] = len(group)
            result.rejected = len(rejects)
        return result

    def _insert_counts(self, cur: Any, counts: list[CountRecord]) -> list[tuple[int, CountRecord]]:
        by_key = {(c.device_id, c.outbox_id, c.seq): c for c in counts}
        new: list[tuple[int, CountRecord]] = []
        items = list(by_key.values())
        for i in range(0, len(items), self._insert_chunk):
            sql, params = self._insert_counts_sql(
                [_count_row(c, self._bool) for c in items[i : i + self._insert_chunk]]
            )
            cur.execute(sql, params)
            for row_id, device_id, outbox_id, seq in cur.fetchall():
                new.append((int(row_id), by_key[(device_id, outbox_id, int(seq))]))
        new.sort(key=lambda item: item[0])
        return new

    _insert_chunk = _INSERT_CHUNK

    def _insert_counts_sql(self, rows: list[tuple[Any, ...]]) -> tuple[str, list[Any]]:
        """One multi-row INSERT that skips duplicates and returns the keys of the rows it inserted."""
        one = "(" + ", ".join("?" * len(_COUNT_COLUMNS)) + ")"
        params = [value for row in rows for value in row]
        return self._sql(
            f"INSERT INTO counts ({', '.join(_COUNT_COLUMNS)}) VALUES {', '.join([one] * len(rows))} "
            "ON CONFLICT (device_id, outbox_id, seq) DO NOTHING RETURNING id, device_id, outbox_id, seq"
        ), params

    def _roll_up(self, cur: Any, new: list[tuple[int, CountRecord]]) -> None:
        buckets: dict[tuple[str, str, int, int], list[float]] = {}
        for _, c in new:
            key = (c.device_id, c.camera_id, c.session, int(c.ts // 60) * 60)
            b = buckets.get(key)
            if b is None:
                buckets[key] = [c.frames, c.count_sum, c.count_max, c.unique_count, c.unique_count]
            else:
                b[0] += c.frames
                b[1] += c.count_sum
                b[2] = max(b[2], c.count_max)
                b[3] = max(b[3], c.unique_count)
                b[4] = min(b[4], c.unique_count)
        if not buckets:
            return
        g, lo = self.greatest, self.least
        cur.executemany(
            self._sql(
                "INSERT INTO minutes (device_id, camera_id, session, minute, frames, count_sum, count_max, unique_max, "
                "unique_min) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (device_id, camera_id, session, minute) DO UPDATE SET "
                "frames = minutes.frames + excluded.frames, count_sum = minutes.count_sum + excluded.count_sum, "
                f"count_max = {g}(minutes.count_max, excluded.count_max), "
                f"unique_max = {g}(minutes.unique_max, excluded.unique_max), "
                f"unique_min = {lo}(minutes.unique_min, excluded.unique_min)"
            ),
            [(*key, int(b[0]), b[1], int(b[2]), int(b[3]), int(b[4])) for key, b in buckets.items()],
        )

    def _latest(self, cur: Any, new: list[tuple[int, CountRecord]]) -> None:
        latest: dict[tuple[str, str], tuple[int, CountRecord]] = {}
        for row_id, c in new:
            key = (c.device_id, c.camera_id)
            if key not in latest or c.ts >= latest[key][1].ts:
                latest[key] = (row_id, c)
        if not latest:
            return
        # Replayed (historical) messages are older than what is shown: the latest state moves forward only.
        cur.executemany(
            self._sql(
                "INSERT INTO cameras (device_id, camera_id, last_ts, last_seq, last_count, last_unique, session, "
                "last_count_id, model) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (device_id, camera_id) DO UPDATE SET last_ts = excluded.last_ts, "
                "last_seq = excluded.last_seq, last_count = excluded.last_count, "
                "last_unique = excluded.last_unique, session = excluded.session, "
                "last_count_id = excluded.last_count_id, model = COALESCE(excluded.model, cameras.model) "
                "WHERE cameras.last_ts IS NULL OR excluded.last_ts >= cameras.last_ts"
            ),
            [
                (device_id, camera_id, c.ts, c.seq, c.count, c.unique_count, c.session, row_id, c.model)
                for (device_id, camera_id), (row_id, c) in sorted(latest.items())
            ],
        )

    def _track(self, cur: Any, t: TrackRecord) -> None:
        cur.execute(
            self._sql(
                "INSERT INTO tracks (device_id, camera_id, session, track_id, event, first_seen, last_seen, frames, "
                "max_score) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (device_id, camera_id, session, track_id, event) DO NOTHING"
            ),
            (
                t.device_id,
                t.camera_id,
                t.session,
                t.track_id,
                t.event,
                t.first_seen,
                t.last_seen,
                t.frames,
                t.max_score,
            ),
        )

    def _status(self, cur: Any, s: StatusRecord) -> None:
        # A retained copy re-delivered on every (re)subscribe is not news: keep the time the state began.
        table = "devices" if s.camera_id is None else "cameras"
        keys = ("device_id",) if s.camera_id is None else ("device_id", "camera_id")
        values = (s.device_id,) if s.camera_id is None else (s.device_id, s.camera_id)
        cur.execute(
            self._sql(
                f"INSERT INTO {table} ({', '.join(keys)}, status, status_at) "
                f"VALUES ({', '.join('?' * len(keys))}, ?, ?) "
                f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET status = excluded.status, status_at = CASE "
                f"WHEN {table}.status = excluded.status AND {table}.status_at IS NOT NULL THEN {table}.status_at "
                "ELSE excluded.status_at END"
            ),
            (*values, s.status, s.at),
        )

    def _seen(self, cur: Any, records: Sequence[Record]) -> None:
        dev: dict[str, float] = {}
        cam: dict[tuple[str, str], float] = {}
        for r in records:
            # A device's live `offline` is its Last Will, sent by the broker: it says nothing about being seen.
            if isinstance(r, SeenRecord) or (
                isinstance(r, StatusRecord) and not r.retained and not (r.camera_id is None and r.status == "offline")
            ):
                dev[r.device_id] = max(dev.get(r.device_id, 0.0), r.at)
                if r.camera_id is not None:
                    cam[(r.device_id, r.camera_id)] = max(cam.get((r.device_id, r.camera_id), 0.0), r.at)
        g = self.greatest
        if dev:
            cur.executemany(
                self._sql(f"UPDATE devices SET last_seen = {g}(COALESCE(last_seen, 0), ?) WHERE device_id = ?"),
                [(at, d) for d, at in sorted(dev.items())],
            )
        if cam:
            cur.executemany(
                self._sql(
                    "INSERT INTO cameras (device_id, camera_id, last_seen) VALUES (?, ?, ?) "
                    f"ON CONFLICT (device_id, camera_id) DO UPDATE SET last_seen = "
                    f"{g}(COALESCE(cameras.last_seen, 0), excluded.last_seen)"
                ),
                [(d, c, at) for (d, c), at in sorted(cam.items())],
            )

    # -- read path ------------------------------------------------------------------------------------------------
    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self._reader()
        try:
            cur.execute(self._sql(sql), tuple(params))
            return _rows(cur)
        finally:
            cur.close()

    def devices(self) -> list[dict[str, Any]]:
        devices = self._query("SELECT * FROM devices ORDER BY device_id")
        cameras = _group(self._query("SELECT * FROM cameras ORDER BY device_id, camera_id"), lambda c: c["device_id"])
        for d in devices:
            for column in _JSON_COLUMNS:
                d[column] = json.loads(d[column]) if d[column] else None
            d["cameras"] = cameras.get(d["device_id"], [])
        return devices

    def series(self, device_id: str, start: float, end: float, camera_id: str | None = None) -> dict[str, Any]:
        sql = (
            "SELECT camera_id, minute, SUM(frames), SUM(count_sum), MAX(count_max), MAX(unique_max) FROM minutes "
            "WHERE device_id = ? AND minute >= ? AND minute < ?"
        )
        params: list[Any] = [device_id, _minute(start), math.ceil(end)]
        if camera_id is not None:
            sql += " AND camera_id = ?"
            params.append(camera_id)
        cur = self._reader()
        try:
            cur.execute(self._sql(sql + " GROUP BY camera_id, minute ORDER BY camera_id, minute"), tuple(params))
            rows = cur.fetchall()
        finally:
            cur.close()
        # Columnar (one list per field and camera): what a chart wants, and a fraction of the bytes of row objects.
        cams: dict[str, dict[str, list[Any]]] = {}
        for cam, group in itertools.groupby(rows, key=lambda r: r[0]):
            _, minutes, raw_frames, sums, maxes, uniques = zip(*group, strict=True)
            frames = [int(f) for f in raw_frames]  # PostgreSQL's SUM(bigint) is numeric (Decimal)
            cams[cam] = {
                "minute": [int(m) for m in minutes],
                "frames": frames,
                "mean": [round(float(c) / (f or 1), 3) for c, f in zip(sums, frames, strict=True)],
                "max": [int(m) for m in maxes],
                "unique": [int(u) for u in uniques],
            }
        return {"device_id": device_id, "start": _minute(start), "end": math.ceil(end), "cameras": cams}

    def count_rows(
        self, start: float, end: float, device_id: str | None = None, camera_id: str | None = None
    ) -> Iterator[dict[str, Any]]:
        sql = f"SELECT {', '.join(_COUNT_COLUMNS)} FROM counts WHERE ts >= ? AND ts < ?"
        params: list[Any] = [start, end]
        if device_id is not None:
            sql += " AND device_id = ?"
            params.append(device_id)
        if camera_id is not None:
            sql += " AND camera_id = ?"
            params.append(camera_id)
        cur = self._reader()
        try:
            cur.execute(self._sql(sql + " ORDER BY ts, device_id, seq"), tuple(params))
            names = [d[0] for d in cur.description]
            while True:
                batch = cur.fetchmany(1000)
                if not batch:
                    break
                for row in batch:
                    doc = dict(zip(names, row, strict=True))
                    doc["historical"] = bool(doc["historical"])
                    yield doc
        finally:
            cur.close()

    def totals(
        self,
        start: float,
        end: float,
        device_id: str | None = None,
        camera_id: str | None = None,
        session: int | None = None,
    ) -> Totals:
        where = ["minute >= ?", "minute < ?"]
        params: list[Any] = [_minute(start), math.ceil(end)]
        for column, value in (("device_id", device_id), ("camera_id", camera_id), ("session", session)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        cond = " AND ".join(where)
        groups = self._query(
            "SELECT device_id, camera_id, session, SUM(frames) AS frames, SUM(count_sum) AS count_sum, "
            f"MAX(unique_max) AS unique_max, MIN(minute) AS first, MAX(minute) AS last FROM minutes WHERE {cond} "
            "GROUP BY device_id, camera_id, session",
            params,
        )
        minutes = self._query(f"SELECT COUNT(DISTINCT minute) AS n FROM minutes WHERE {cond}", params)[0]["n"]
        unique = 0
        for grp in groups:
            # The unique count already reached before the window belongs to earlier surveys.
            before = self._query(
                "SELECT MAX(unique_max) AS u FROM minutes WHERE device_id = ? AND camera_id = ? AND session = ? "
                "AND minute < ?",
                (grp["device_id"], grp["camera_id"], grp["session"], _minute(start)),
            )[0]["u"]
            unique += max(0, int(grp["unique_max"]) - int(before or 0))
        frames = sum(int(g["frames"]) for g in groups)
        count_sum = sum(float(g["count_sum"]) for g in groups)
        minutes = int(minutes or 0)
        return Totals(
            unique=unique,
            frames=frames,
            minutes=minutes,
            starfish_per_minute=round(unique / minutes, 3) if minutes else 0.0,
            mean_in_view=round(count_sum / frames, 3) if frames else 0.0,
            first=float(min(g["first"] for g in groups)) if groups else None,
            last=float(max(g["last"] for g in groups)) + 60 if groups else None,
            cameras=len({(g["device_id"], g["camera_id"]) for g in groups}),
        )

    def sessions(self, device_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        sql = "SELECT device_id, session, MIN(minute) AS first, MAX(minute) AS last FROM minutes"
        params: list[Any] = []
        if device_id is not None:
            sql += " WHERE device_id = ?"
            params.append(device_id)
        rows = self._query(
            sql + " GROUP BY device_id, session ORDER BY MAX(minute) DESC, device_id LIMIT ?", [*params, limit]
        )
        out = []
        for r in rows:
            totals = self.totals(0, int(r["last"]) + 60, r["device_id"], session=int(r["session"]))
            out.append(
                {
                    "device_id": r["device_id"],
                    "session": int(r["session"]),
                    "start": float(r["first"]),
                    "end": float(r["last"]) + 60,
                    "totals": totals.as_dict(),
                }
            )
        return out

    def create_survey(
        self, name: str, start: float, end: float, device_id: str | None = None, camera_id: str | None = None
    ) -> Survey:
        if not name.strip() or len(name) > 200:
            raise ValueError("survey name must be 1-200 characters")
        if end <= start:
            raise ValueError("survey end must be after its start")
        now = time.time()
        with self._transaction() as cur:
            cur.execute(
                self._sql(
                    "INSERT INTO surveys (name, start_ts, end_ts, device_id, camera_id, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) RETURNING id"
                ),
                (name, start, end, device_id, camera_id, now),
            )
            survey_id = int(cur.fetchone()[0])
        return Survey(survey_id, name, start, end, device_id, camera_id, now)

    def surveys(self) -> list[Survey]:
        return [_survey(r) for r in self._query("SELECT * FROM surveys ORDER BY start_ts DESC, id DESC")]

    def survey(self, survey_id: int) -> Survey | None:
        rows = self._query("SELECT * FROM surveys WHERE id = ?", (survey_id,))
        return _survey(rows[0]) if rows else None

    def live_since(self, cursor: int) -> tuple[int, list[dict[str, Any]]]:
        top = self._query("SELECT MAX(id) AS id FROM counts")[0]["id"]
        cams = self._query(
            "SELECT device_id, camera_id, last_ts, last_seq, last_count, last_unique, session, "
            "last_count_id FROM cameras WHERE last_count_id > ? ORDER BY device_id, camera_id",
            (cursor,),
        )
        # A batch committed between the two reads shows in `cams` but not in `top`: move past what was returned.
        newest = max([int(top or 0), *(int(c["last_count_id"]) for c in cams)])
        return newest, cams

    def rejects(self) -> list[dict[str, Any]]:
        return self._query("SELECT reason, n, last_topic, last_at FROM rejects ORDER BY reason")

    def seqs(self, device_id: str) -> list[int]:
        return [
            int(r["seq"]) for r in self._query("SELECT seq FROM counts WHERE device_id = ? ORDER BY seq", (device_id,))
        ]


def _count_row(c: CountRecord, as_bool: Any) -> tuple[Any, ...]:
    return (
        c.device_id,
        c.camera_id,
        c.outbox_id,
        c.seq,
        c.session,
        c.ts,
        c.frame,
        c.count,
        c.unique_count,
        c.frames,
        c.count_sum,
        c.count_max,
        as_bool(c.historical),
        c.model,
        c.received_at,
    )


def _minute(ts: float) -> int:
    return int(ts // 60) * 60


def _survey(r: dict[str, Any]) -> Survey:
    return Survey(
        int(r["id"]),
        r["name"],
        float(r["start_ts"]),
        float(r["end_ts"]),
        r["device_id"],
        r["camera_id"],
        float(r["created_at"]),
    )


def _group(items: Sequence[Any], key: Any) -> dict[Any, list[Any]]:
    out: dict[Any, list[Any]] = defaultdict(list)
    for item in items:
        out[key(item)].append(item)
    return out


class ThreadLocalConnections:
    """One read connection per thread (web worker threads, SSE loops); all closed together."""

    def __init__(self, factory: Any) -> None:
        self._factory = factory
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def get(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._factory()
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(Exception):  # noqa: BLE001 - closing a connection another thread holds
                conn.close()

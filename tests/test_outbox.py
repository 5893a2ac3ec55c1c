"""The SQLite outbox on its own: durability of seq/session, ordering, bounds, locking (real SQLite files)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_agent.outbox import Outbox, OutboxError, OutboxLockedError


def _payload(seq: int | None) -> bytes:
    return f'{{"seq": {seq}}}'.encode()


def test_seq_and_session_survive_reopen_and_are_wal(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as box:
        assert box.start_session() == 1
        seqs = [box.append("t/a", _payload).seq for _ in range(5)]
        box.append("t/tracks", lambda s: b"{}", sequenced=False)
        assert seqs == [1, 2, 3, 4, 5]
        assert box.depth == 6
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with Outbox(path) as box:
        assert box.session == 1 and box.last_seq == 5 and box.depth == 6
        assert box.start_session() == 2
        assert box.append("t/a", _payload).seq == 6
        records = box.read_after(0, 100)
        assert [r.seq for r in records] == [1, 2, 3, 4, 5, None, 6]
        assert records[0].payload == b'{"seq": 1}'
        assert [r.id for r in records] == sorted(r.id for r in records)


def test_commit_survives_kill_9(tmp_path: Path) -> None:
    """A message is durable when append() returns: a process killed right after it loses nothing."""
    path = tmp_path / "o.db"
    script = textwrap.dedent(f"""
        import os, signal
        from edge_agent.outbox import Outbox
        box = Outbox({str(path)!r})
        box.start_session()
        for _ in range(50):
            box.append("t", lambda s: b"x")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert proc.returncode == -9
    with Outbox(path) as box:
        assert box.depth == 50 and box.last_seq == 50 and box.session == 1


def test_delete_and_read_after(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as box:
        ids = [box.append("t", _payload).id for _ in range(10)]
        assert box.delete(ids[:4] + [10_000]) == 4  # unknown ids are ignored
        assert box.depth == 6
        assert [r.id for r in box.read_after(ids[5], 3)] == ids[6:9]
        assert box.max_id() == ids[-1]
        assert box.delete([]) == 0


def test_drop_oldest_is_bounded_counted_and_persisted(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, max_messages=10) as box:
        for _ in range(25):
            box.append("t", _payload)
        assert box.depth == 10
        assert box.dropped_total == 15
        assert [r.seq for r in box.read_after(0, 100)] == list(range(16, 26))
    with Outbox(path, max_messages=10) as box:
        assert box.dropped_total == 15  # reported across restarts


def test_drop_by_age(tmp_path: Path) -> None:
    # Rows of this boot are aged by the boot clock (CLOCK_BOOTTIME seconds), whatever the wall clock says.
    with Outbox(tmp_path / "o.db", max_age_s=60) as box:
        box.append("t", _payload, boot_s=1000.0)
        box.append("t", _payload, boot_s=1050.0)
        box.append("t", _payload, boot_s=1100.0)
        assert box.enforce_age(boot_s=1111.0) == 2
        assert box.depth == 1 and box.dropped_total == 2
        assert [r.seq for r in box.read_after(0, 10)] == [3]


SYNCED = 1_790_000_000.0  # 2026-09: a synced wall clock
DAY = 86400.0


def test_clock_jump_never_age_drops_the_backlog(tmp_path: Path) -> None:
    """A device without RTC boots at a stale time, stores counts, then NTP steps the clock forward by years."""
    path = tmp_path / "o.db"
    with Outbox(path, max_age_s=7 * DAY, boot_id="boot-A") as box:
        stale = 1_600_000_000.0  # 2020: the clock was never set this boot
        for i in range(5):
            box.append("t", _payload, now=stale + i, boot_s=30.0 + i)
        # NTP syncs: the wall clock jumps ~6 years forward, but only 10 minutes passed on the boot clock.
        assert box.enforce_age(now=SYNCED, boot_s=630.0) == 0
        assert box.depth == 5
        # A clock stepped backwards (rows stamped in the "future") does not drop anything either.
        box.append("t", _payload, now=SYNCED + 365 * DAY, boot_s=640.0)
        assert box.enforce_age(now=SYNCED, boot_s=650.0) == 0
        # The boot clock still bounds age: 8 days later (boot clock) they are old, whatever the wall clock says.
        assert box.enforce_age(now=stale, boot_s=30.0 + 8 * DAY) == 6
    assert box.dropped_total == 6


def test_rows_of_an_earlier_boot_age_only_on_plausible_time_stamps(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, max_age_s=7 * DAY, boot_id="boot-A") as box:
        box.append("t", _payload, now=1_600_000_000.0, boot_s=10.0)  # stale clock (2020): implausible
        box.append("t", _payload, now=SYNCED + 30 * DAY, boot_s=11.0)  # in the future of the synced clock
        box.append("t", _payload, now=SYNCED - 10 * DAY, boot_s=12.0)  # plausible and 10 days old
        box.append("t", _payload, now=SYNCED - 1 * DAY, boot_s=13.0)  # plausible and 1 day old
    with Outbox(path, max_age_s=7 * DAY, boot_id="boot-B") as box:  # rebooted: the boot clock restarted
        assert box.boot == 2
        # The current clock is itself not set yet: nothing from the earlier boot is aged.
        assert box.enforce_age(now=1_600_000_100.0, boot_s=5.0) == 0
        # Synced: only the plausible, really old row goes.
        assert box.enforce_age(now=SYNCED, boot_s=5.0) == 1
        assert [r.seq for r in box.read_after(0, 10)] == [1, 2, 4]


def test_outbox_id_is_random_per_database_and_persistent(tmp_path: Path) -> None:
    with Outbox(tmp_path / "a.db") as a, Outbox(tmp_path / "b.db") as b:
        first = a.outbox_id
        assert len(first) == 32 and first != b.outbox_id
    with Outbox(tmp_path / "a.db") as a:
        assert a.outbox_id == first
    (tmp_path / "a.db").unlink()  # a rebuilt outbox: seq restarts, under a new identity
    with Outbox(tmp_path / "a.db") as a:
        assert a.outbox_id != first and a.append("t", _payload).seq == 1


def test_ids_stay_monotonic_after_the_table_empties(tmp_path: Path) -> None:
    # No AUTOINCREMENT: the outbox hands out ids itself, so an emptied table never reuses an id within a process
    # (the sender's cursor would skip a reused id).
    with Outbox(tmp_path / "o.db") as box:
        ids = [box.append("t", _payload).id for _ in range(3)]
        box.delete(ids)
        assert box.depth == 0
        assert box.append("t", _payload).id == ids[-1] + 1
    with sqlite3.connect(tmp_path / "o.db") as db:
        assert db.execute("SELECT COUNT(*) FROM sqlite_master WHERE name='sqlite_sequence'").fetchone()[0] == 0


def test_old_autoincrement_outbox_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, seq INTEGER, topic TEXT NOT NULL,
                                   payload BLOB NOT NULL, created_at REAL NOT NULL);
            CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
            INSERT INTO counters VALUES ('seq', 7), ('session', 2), ('dropped', 0);
            INSERT INTO messages(seq, topic, payload, created_at) VALUES (7, 't', x'00', 1000.0);
        """)
    with Outbox(path) as box:
        assert box.last_seq == 7 and box.depth == 1 and box.outbox_id
        assert box.append("t", _payload).seq == 8
        # The old row has no boot clock and an implausible stamp: kept, not guessed away.
        assert box.enforce_age() == 0


def test_second_owner_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path):
        with pytest.raises(OutboxLockedError, match="in use"):
            Outbox(path)
    Outbox(path).close()  # released on close


def test_failed_payload_builder_rolls_back(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as box:
        box.append("t", _payload)

        def broken(_seq: int | None) -> bytes:
            raise ValueError("bad payload")

        with pytest.raises(ValueError, match="bad payload"):
            box.append("t", broken)
        assert box.append("t", _payload).seq == 2  # the failed append did not consume a seq
        assert box.depth == 2


def test_bad_arguments_and_closed_use(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_messages"):
        Outbox(tmp_path / "a.db", max_messages=0)
    with pytest.raises(ValueError, match="max_age_s"):
        Outbox(tmp_path / "b.db", max_age_s=0)
    with pytest.raises(ValueError, match="synchronous"):
        Outbox(tmp_path / "c.db", synchronous="OFF")  # type: ignore[arg-type]
    (tmp_path / "junk.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(OutboxError, match="junk.db"):
        Outbox(tmp_path / "junk.db")
    box = Outbox(tmp_path / "d.db")
    box.close()
    with pytest.raises(OutboxError, match="closed"):
        box.append("t", _payload)


def test_disk_full_is_an_outbox_error_and_nothing_half_written(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as box:
        box.append("t", _payload)
        # Simulate a full disk with SQLite's own page limit (the file cannot grow past its current size).
        pages = box._db.execute("PRAGMA page_count").fetchone()[0]  # noqa: SLF001 - test-only access
        box._db.execute(f"PRAGMA max_page_count={pages}")  # noqa: SLF001
        with pytest.raises(OutboxError, match="full"):
            for _ in range(1000):
                box.append("t", lambda _s: b"y" * 50_000)
        depth, last = box.depth, box.last_seq
        box._db.execute("PRAGMA max_page_count=1073741823")  # noqa: SLF001 - space again
        assert box.append("t", _payload).seq == last + 1  # the failed append consumed no seq
        assert box.depth == depth + 1 == len(box.read_after(0, 10_000))

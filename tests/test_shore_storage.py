"""One storage suite, run against SQLite and the real PostgreSQL (fixture `storage` in tests/helpers/shore.py)."""

from __future__ import annotations

from typing import Any

import pytest

from shore.records import CountRecord, InfoRecord, RejectRecord, SeenRecord, StatusRecord, TrackRecord
from shore.storage import open_storage

T0 = 1_790_000_000.0 - (1_790_000_000.0 % 60)  # a minute boundary


def rec(
    seq: int,
    *,
    device: str = "dev1",
    camera: str = "cam0",
    ts: float | None = None,
    count: int = 1,
    unique: int = 0,
    session: int = 1,
    outbox: str = "ob1",
    frames: int = 1,
) -> CountRecord:
    return CountRecord(
        device_id=device,
        camera_id=camera,
        outbox_id=outbox,
        seq=seq,
        session=session,
        ts=T0 + seq if ts is None else ts,
        frame=seq,
        count=count,
        unique_count=unique,
        frames=frames,
        count_sum=float(count * frames),
        count_max=count,
        historical=False,
        model="m v1 (fp32, ort)",
        received_at=T0 + seq,
    )


def test_duplicates_are_stored_once(storage: Any) -> None:
    first = storage.write([rec(1), rec(2), rec(3)])
    assert (first.new_counts, first.duplicate_counts) == (3, 0)
    again = storage.write([rec(2), rec(3), rec(4), rec(4)])
    assert (again.new_counts, again.duplicate_counts) == (1, 3)
    assert storage.seqs("dev1") == [1, 2, 3, 4]
    # The same seq from another outbox (a re-created outbox restarts seq) is a different message.
    assert storage.write([rec(1, outbox="ob2")]).new_counts == 1
    assert storage.seqs("dev1") == [1, 1, 2, 3, 4]


def test_roll_up_counts_only_new_rows(storage: Any) -> None:
    storage.write([rec(i, count=i % 3, unique=i // 2) for i in range(1, 11)])
    storage.write([rec(i, count=i % 3, unique=i // 2) for i in range(5, 11)])  # redelivered
    cams = storage.series("dev1", T0, T0 + 60)["cameras"]
    assert list(cams) == ["cam0"]
    p = cams["cam0"]
    assert p["minute"] == [int(T0)]
    assert p["frames"] == [10]
    assert p["max"] == [2]
    assert p["unique"] == [5]
    assert p["mean"][0] == pytest.approx(sum(i % 3 for i in range(1, 11)) / 10, abs=1e-3)


def test_series_per_minute_and_camera(storage: Any) -> None:
    storage.write([rec(i, ts=T0 + i * 30, camera=f"cam{i % 2}") for i in range(1, 9)])
    cams = storage.series("dev1", T0, T0 + 3600)["cameras"]
    assert set(cams) == {"cam0", "cam1"}
    assert sum(sum(c["frames"]) for c in cams.values()) == 8
    assert cams["cam0"]["minute"] == sorted(cams["cam0"]["minute"])
    only = storage.series("dev1", T0, T0 + 3600, camera_id="cam1")["cameras"]
    assert set(only) == {"cam1"}
    assert storage.series("dev1", T0 + 7200, T0 + 9000)["cameras"] == {}


def test_totals_window_and_session(storage: Any) -> None:
    # Session 1: minutes 0..4, unique rises 0 -> 9; session 2 restarts unique at 0.
    storage.write([rec(i, ts=T0 + i * 30, unique=i, count=2) for i in range(10)])
    storage.write([rec(100 + i, ts=T0 + 600 + i * 30, unique=i, session=2, count=1) for i in range(4)])
    whole = storage.totals(T0, T0 + 3600, "dev1")
    assert whole.unique == 9 + 3
    assert whole.frames == 14
    assert whole.minutes == 5 + 2
    assert whole.starfish_per_minute == pytest.approx(12 / 7, abs=1e-3)
    # A window that starts mid-session counts only the rise inside it.
    late = storage.totals(T0 + 120, T0 + 300, "dev1", session=1)
    assert late.unique == 9 - 3  # minute 1 ended at unique 3
    assert late.frames == 6
    sessions = storage.sessions("dev1")
    assert [s["session"] for s in sessions] == [2, 1]
    assert sessions[1]["totals"]["unique"] == 9
    assert sessions[0]["totals"]["frames"] == 4


def test_surveys(storage: Any) -> None:
    storage.write([rec(i, ts=T0 + i, unique=i) for i in range(1, 30)])
    s = storage.create_survey("reef 4, transect A", T0, T0 + 120, device_id="dev1")
    assert s.id > 0
    assert storage.survey(s.id) == s
    assert [x.name for x in storage.surveys()] == ["reef 4, transect A"]
    assert storage.totals(s.start, s.end, s.device_id).unique == 29
    with pytest.raises(ValueError, match="after its start"):
        storage.create_survey("x", T0, T0)
    with pytest.raises(ValueError, match="name"):
        storage.create_survey("  ", T0, T0 + 1)
    assert storage.survey(s.id + 1000) is None


def test_device_and_camera_state(storage: Any) -> None:
    storage.write(
        [
            StatusRecord("dev1", None, "online", T0, retained=False),
            StatusRecord("dev1", "cam0", "online", T0, retained=True),
            InfoRecord("dev1", "model", {"name": "<b>m</b>", "version": 3}, T0),
            InfoRecord("dev1", "stats", {"outbox_depth": 7, "cameras": {"cam0": {"processed_fps": 9.5}}}, T0),
            InfoRecord("dev1", "update", {"state": "probation", "version": 4}, T0),
            SeenRecord("dev1", "cam0", T0 + 5),
            rec(1, count=4, unique=2),
        ]
    )
    # A retained copy of the same state later keeps the time the state began; a new state moves it.
    storage.write([StatusRecord("dev1", None, "online", T0 + 50, retained=True)])
    (dev,) = storage.devices()
    assert dev["status"] == "online" and dev["status_at"] == T0
    assert dev["last_seen"] == T0 + 5
    assert dev["model"]["name"] == "<b>m</b>"
    assert dev["stats"]["outbox_depth"] == 7
    assert dev["update_state"]["state"] == "probation"
    (cam,) = dev["cameras"]
    assert (cam["camera_id"], cam["status"], cam["last_count"], cam["last_unique"]) == ("cam0", "online", 4, 2)
    storage.write([StatusRecord("dev1", None, "offline", T0 + 60, retained=False)])
    (dev,) = storage.devices()
    assert dev["status"] == "offline" and dev["status_at"] == T0 + 60
    assert dev["last_seen"] == T0 + 5  # the Last Will comes from the broker, not from the device


def test_latest_moves_forward_only(storage: Any) -> None:
    storage.write([rec(5, count=3, ts=T0 + 50)])
    storage.write([rec(2, count=9, ts=T0 + 20)])  # a replayed, older message
    (cam,) = storage.devices()[0]["cameras"]
    assert (cam["last_seq"], cam["last_count"]) == (5, 3)


def test_live_since(storage: Any) -> None:
    top0, cams0 = storage.live_since(0)
    assert (top0, cams0) == (0, [])
    storage.write([rec(1, camera="a"), rec(2, camera="b")])
    top1, cams1 = storage.live_since(0)
    assert {c["camera_id"] for c in cams1} == {"a", "b"}
    storage.write([rec(3, camera="b", count=7)])
    top2, cams2 = storage.live_since(top1)
    assert top2 > top1
    assert [(c["camera_id"], c["last_count"]) for c in cams2] == [("b", 7)]


def test_rejects_tracks_and_rows(storage: Any) -> None:
    storage.write(
        [RejectRecord("schema_version", "starfish/x/cam0/counts", T0)] * 2
        + [RejectRecord("device_id", "starfish/<script>/status", T0)]
    )
    storage.write([RejectRecord("schema_version", "starfish/y/cam0/counts", T0 + 1)])
    by_reason = {r["reason"]: r for r in storage.rejects()}
    assert by_reason["schema_version"]["n"] == 3
    assert by_reason["schema_version"]["last_topic"] == "starfish/y/cam0/counts"
    assert by_reason["device_id"]["n"] == 1
    track = TrackRecord("dev1", "cam0", 1, "new", 7, T0, T0 + 2, 3, 0.9)
    storage.write([track, track])
    storage.write([rec(i) for i in range(1, 6)])
    rows = list(storage.count_rows(T0, T0 + 60, "dev1"))
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["historical"] is False
    assert list(storage.count_rows(T0, T0 + 60, "nobody")) == []


def test_reopen_keeps_data(storage_url: tuple[str, str | None]) -> None:
    url, schema = storage_url
    with open_storage(url, schema=schema) as st:
        st.write([rec(1), rec(2)])
    with open_storage(url, schema=schema) as st:
        assert st.seqs("dev1") == [1, 2]
        assert st.write([rec(2)]).duplicate_counts == 1


def test_batch_is_atomic(storage: Any) -> None:
    bad = rec(2)
    object.__setattr__(bad, "count", None)  # violates NOT NULL: the whole batch must roll back
    with pytest.raises(Exception):  # noqa: B017 - each engine raises its own IntegrityError
        storage.write([rec(1), bad])
    assert storage.seqs("dev1") == []
    assert storage.write([rec(1)]).new_counts == 1


def test_copy_sqlite_to_the_other_engine(tmp_path: Any, storage: Any) -> None:
    from shore.copy import copy_history

    with open_storage(str(tmp_path / "laptop.db")) as laptop:
        laptop.write([rec(i, ts=T0 + i * 20, unique=i, camera=f"cam{i % 2}") for i in range(1, 40)])
        laptop.create_survey("transect", T0, T0 + 600, device_id="dev1")
        first = copy_history(laptop, storage, batch=7)
        again = copy_history(laptop, storage)
        assert (first.counts_read, first.counts_new, first.surveys) == (39, 39, 1)
        assert (again.counts_new, again.surveys) == (0, 0)
        assert storage.seqs("dev1") == laptop.seqs("dev1")
        assert storage.totals(T0, T0 + 3600, "dev1") == laptop.totals(T0, T0 + 3600, "dev1")
        assert storage.series("dev1", T0, T0 + 3600) == laptop.series("dev1", T0, T0 + 3600)

"""The persisted update state machine: allowed transitions only, one active update, durable across reopen."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

from edge_agent.update import staging
from edge_agent.update.state import ALLOWED, TERMINAL, TransitionError, UpdateState, UpdateStore

S = UpdateState
T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)


def new(store: UpdateStore, digest: str = "d1", version: int = 2):
    return store.create(
        name="m", version=version, rollback=False, digest=digest, announcement=b"{}", created_at=T0, size=10
    )


def test_happy_path_and_log_survive_reopen(tmp_path: Path):
    store = UpdateStore(tmp_path)
    record = new(store)
    for state in (S.VERIFYING, S.STAGING, S.CHECKING, S.SWAPPING, S.PROBATION, S.COMMITTED):
        record = store.transition(record.id, state, previous_target="versions/1" if state is S.SWAPPING else None)
    store.close()
    again = UpdateStore(tmp_path)
    assert again.get(record.id).state is S.COMMITTED and again.get(record.id).previous_target == "versions/1"
    assert again.transitions(record.id)[0] is S.DOWNLOADING and len(again.transitions(record.id)) == 7
    assert again.active() is None and again.last_created_at("m") == T0
    again.close()


def test_illegal_transitions_refused(tmp_path: Path):
    store = UpdateStore(tmp_path)
    record = new(store)
    with pytest.raises(TransitionError):
        store.transition(record.id, S.SWAPPING)  # skipping verify/stage/check
    with pytest.raises(TransitionError):
        store.transition(record.id, S.COMMITTED)  # commit without probation
    store.transition(record.id, S.FAILED, error_code="download_refused", error="HTTP 404")
    for state in UpdateState:
        with pytest.raises(TransitionError):
            store.transition(record.id, state)  # terminal is terminal
    assert store.get(record.id).error_code == "download_refused"
    assert set(ALLOWED) | TERMINAL == set(UpdateState)
    store.close()


def test_one_active_update_and_digest_unique(tmp_path: Path):
    store = UpdateStore(tmp_path)
    record = new(store)
    with pytest.raises(TransitionError, match="still in progress"):
        new(store, digest="d2", version=3)
    store.transition(record.id, S.FAILED)
    with pytest.raises(TransitionError, match="already handled"):  # the same announcement twice
        new(store, digest="d1")
    assert new(store, digest="d2", version=3).state is S.DOWNLOADING
    store.close()


def test_current_link_is_replaced_atomically(tmp_path: Path):
    (tmp_path / "versions" / "1").mkdir(parents=True)
    (tmp_path / "versions" / "2").mkdir()
    staging.point_current(tmp_path, "versions/1")
    staging.point_current(tmp_path, "versions/2")
    assert os.readlink(tmp_path / "current") == "versions/2"
    assert staging.target_version(staging.current_target(tmp_path)) == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert staging.prune_versions(tmp_path, {2}) == [1]


def test_pruning_a_version_removes_its_engine_cache(tmp_path: Path):
    """The staging check builds a TensorRT engine beside the version (`versions/<v>.trt-cache`): it goes with it."""
    from edge_agent.bundle.loader import ENGINE_CACHE_SUFFIX

    versions = tmp_path / "versions"
    for version in (1, 2, 3):
        (versions / str(version)).mkdir(parents=True)
        (versions / f"{version}{ENGINE_CACHE_SUFFIX}").mkdir()
        (versions / f"{version}{ENGINE_CACHE_SUFFIX}" / "model.engine").write_bytes(b"engine")
    (versions / f"7{ENGINE_CACHE_SUFFIX}").mkdir()  # the cache of a failed update whose version is gone
    assert staging.prune_versions(tmp_path, {2, 3}) == [1]
    assert sorted(p.name for p in versions.iterdir()) == ["2", "2.trt-cache", "3", "3.trt-cache"]


def test_baseline_fps_persists_and_an_older_database_gains_the_column(tmp_path: Path):
    import sqlite3

    from edge_agent.device_state import STATE_DB_NAME

    store = UpdateStore(tmp_path)
    record = new(store)
    store.set_baseline_fps(record.id, 12.5)
    store.close()
    # The database as an agent before the baseline column wrote it: the column is added on open, rows kept.
    with sqlite3.connect(tmp_path / STATE_DB_NAME) as db:
        db.execute("ALTER TABLE model_update DROP COLUMN baseline_fps")
    again = UpdateStore(tmp_path)
    assert again.get(record.id).baseline_fps is None and again.get(record.id).state is S.DOWNLOADING
    again.set_baseline_fps(record.id, 9.0)
    again.close()
    assert UpdateStore(tmp_path).get(record.id).baseline_fps == 9.0

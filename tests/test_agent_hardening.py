"""Issue 11 on the whole agent: a full outbox (SQLite's page limit, a real "database or disk is full") never stops
counting, and a failing shutdown step does not skip the others (`stopped` published, WAL checkpointed)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edge_agent.app import build_agent
from edge_agent.config import load_config_data
from edge_agent.outbox import Outbox
from tests.helpers.agent import Clip, agent_config
from tests.helpers.mqtt_broker import wait_until

pytestmark = pytest.mark.mqtt

DEVICE = "test-dev"


def test_disk_full_and_a_failing_tracker_flush(
    tmp_path: Path, clip: Clip, agent_bundle, mosquitto, mqtt_subscriber, caplog: pytest.LogCaptureFixture
) -> None:
    sub = mqtt_subscriber(mosquitto, [f"starfish/{DEVICE}/#"])
    cfg = agent_config(tmp_path, agent_bundle, clip.path, mosquitto.port, detector={"score_threshold": 0.0})
    agent = build_agent(load_config_data(cfg))
    outbox: Outbox = agent.publisher.outbox  # type: ignore[attr-defined]
    pages = outbox._db.execute("PRAGMA page_count").fetchone()[0]  # noqa: SLF001 - test-only access
    outbox._db.execute(f"PRAGMA max_page_count={pages}")  # noqa: SLF001 - the "disk" is full from the start

    def broken_flush() -> list:
        raise RuntimeError("tracker flush exploded")

    agent.cameras["cam0"].tracker.flush = broken_flush  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING):
        assert agent.run() == 0
    summary = agent.summary()
    assert summary.frames == clip.frames  # every frame was detected and tracked, none skipped for the disk
    lost = agent.publisher.not_stored()  # type: ignore[attr-defined]
    assert lost.get("counts", 0) >= 1, lost  # counted, not silently gone
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "could not be stored" in messages and "detection goes on" in messages
    assert "shutdown step 'camera cam0 tracker flush' failed" in messages
    # The later steps still ran: `stopped` is retained, the detector and the outbox are closed.
    assert wait_until(lambda: [m.payload for m in sub.on(f"{DEVICE}/status")][-1:] == [b"stopped"], 5)
    wal = Path(f"{cfg['outbox_path']}-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # checkpointed (TRUNCATE) on close
    Outbox(cfg["outbox_path"]).close()  # and its lock released

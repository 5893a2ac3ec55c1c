"""Copy a station's history from one database to another (SQLite → PostgreSQL when a fleet outgrows a laptop).

Raw counts go through the ordinary write path, so the destination rebuilds its own per-minute roll-ups and the
`(device_id, outbox_id, seq)` key makes a re-run (or a copy into a database that already ingests) add nothing twice.
Saved surveys are copied too. Device and camera states are not: they are retained on the broker and arrive within
seconds of the first start against the new database.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from shore.records import CountRecord
from shore.storage import Storage

logger = logging.getLogger(__name__)

_BATCH = 2000


@dataclass(frozen=True)
class CopyResult:
    counts_read: int
    counts_new: int
    surveys: int


def copy_history(source: Storage, dest: Storage, batch: int = _BATCH) -> CopyResult:
    read = new = 0
    pending: list[CountRecord] = []
    for row in source.count_rows(float("-inf"), float("inf")):
        pending.append(CountRecord(**row))
        if len(pending) >= batch:
            new += dest.write(pending).new_counts
            read += len(pending)
            pending = []
            logger.info("copied %d counts", read)
    if pending:
        new += dest.write(pending).new_counts
        read += len(pending)
    existing = {(s.name, s.start, s.end, s.device_id, s.camera_id) for s in dest.surveys()}
    surveys = 0
    for s in source.surveys():
        if (s.name, s.start, s.end, s.device_id, s.camera_id) not in existing:
            dest.create_survey(s.name, s.start, s.end, s.device_id, s.camera_id)
            surveys += 1
    return CopyResult(read, new, surveys)

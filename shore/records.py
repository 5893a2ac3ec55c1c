"""What ingest hands to storage: plain, already-validated records (one write batch = one transaction)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class CountRecord:
    """One counts message. `(device_id, outbox_id, seq)` is its identity; duplicates are dropped by storage."""

    device_id: str
    camera_id: str
    outbox_id: str
    seq: int
    session: int
    ts: float  # capture time, UTC epoch seconds
    frame: int
    count: int
    unique_count: int
    frames: int  # 1, or the window's frames in `aggregate` counts mode
    count_sum: float  # starfish-frames in the message (count, or mean * frames)
    count_max: int
    historical: bool
    model: str | None  # "name v<version> (<variant>, <backend>)"
    received_at: float


@dataclass(frozen=True)
class TrackRecord:
    device_id: str
    camera_id: str
    session: int
    event: Literal["new", "end"]
    track_id: int
    first_seen: float
    last_seen: float
    frames: int
    max_score: float


@dataclass(frozen=True)
class StatusRecord:
    """A device (`camera_id` None) or camera status word; `at` is when shore received it."""

    device_id: str
    camera_id: str | None
    status: str
    at: float
    retained: bool


InfoKind = Literal["model", "stats", "update", "result"]


@dataclass(frozen=True)
class InfoRecord:
    """Latest JSON document of a device-level topic (`model`, `stats`, `model/update`, `model/result`)."""

    device_id: str
    kind: InfoKind
    doc: dict[str, Any]
    at: float


@dataclass(frozen=True)
class SeenRecord:
    """A live (not retained) message from a device: it was alive at `at`."""

    device_id: str
    camera_id: str | None
    at: float


@dataclass(frozen=True)
class RejectRecord:
    """A message that was counted and ignored; `topic` is kept (truncated) for diagnosis, shown escaped."""

    reason: str
    topic: str
    at: float


Record = CountRecord | TrackRecord | StatusRecord | InfoRecord | SeenRecord | RejectRecord


@dataclass
class WriteResult:
    new_counts: int = 0
    duplicate_counts: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

"""Pydantic models of every JSON payload the agent publishes (field docs: docs/mqtt.md).

The agent core hands plain dicts to `AgentPublisher`; they are validated here so that a wrong key or type fails at
the producer with a message naming the field, instead of reaching subscribers as a silently different schema.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer

SCHEMA_VERSION = 1

CameraState = Literal["online", "offline", "disabled"]
DeviceState = Literal["online", "offline", "stopped"]


def utc_now_iso() -> str:
    return iso_utc(datetime.now(timezone.utc))


def iso_utc(value: datetime) -> str:
    """UTC ISO 8601 with millisecond precision and a `Z` suffix; naive datetimes are taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


# Accepts a datetime or an ISO 8601 string; naive values are taken as UTC; JSON gets `...Z` with milliseconds.
UtcDatetime = Annotated[datetime, AfterValidator(_as_utc), PlainSerializer(iso_utc, return_type=str, when_used="json")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelRef(_Strict):
    """Which model produced a result."""

    name: str = Field(description="Model name from the bundle manifest.")
    version: int = Field(ge=0, description="Bundle version (monotonic per model name).")
    variant: str = Field(description="Bundle variant, e.g. `fp32` or `int8`.")
    backend: str = Field(description="Detector back end, e.g. `onnxruntime` or `tensorrt`.")


class ModelInfo(ModelRef):
    """Retained `…/model`: the running model."""

    tensorrt_version: str | None = Field(None, description="TensorRT version when the back end is `tensorrt`.")
    load_time_s: float | None = Field(None, ge=0, description="Seconds it took to load and warm up the model.")
    providers: list[str] | None = Field(None, description="onnxruntime execution providers in use, in order.")


class ModelPayload(ModelInfo):
    schema_version: int = SCHEMA_VERSION
    device_id: str
    ts: UtcDatetime = Field(description="When this model became active (UTC).")


class Detection(_Strict):
    x1: float = Field(description="Left edge, source-image pixels.")
    y1: float = Field(description="Top edge, source-image pixels.")
    x2: float = Field(description="Right edge, source-image pixels.")
    y2: float = Field(description="Bottom edge, source-image pixels.")
    score: float = Field(ge=0, le=1, description="Detector confidence.")
    track_id: int | None = Field(None, description="Tracker id of the box, None if not (yet) tracked.")


class CountsInput(_Strict):
    """What the agent core passes to `AgentPublisher.publish_counts` for one processed frame."""

    ts: UtcDatetime = Field(description="Capture time of the frame (UTC).")
    frame: int = Field(ge=0, description="Frame number within the camera's stream since the agent started.")
    count: int = Field(ge=0, description="Starfish detected in this frame (above the score threshold).")
    unique_count: int = Field(ge=0, description="Distinct tracks since agent start or the last reset.")
    detections: list[Detection] | None = Field(None, description="Per-box detail (optional).")
    model: ModelRef | None = Field(None, description="Model that produced it; defaults to the running model.")


class Aggregate(_Strict):
    """Summary of the frames in one aggregation window (counts mode `aggregate`)."""

    frames: int = Field(ge=1, description="Frames processed in the window.")
    first_ts: UtcDatetime = Field(description="Capture time of the first frame of the window.")
    first_frame: int = Field(ge=0, description="Frame number of the first frame of the window.")
    count_min: int = Field(ge=0)
    count_max: int = Field(ge=0)
    count_mean: float = Field(ge=0)


class CountsPayload(CountsInput):
    """`…/{camera_id}/counts`."""

    schema_version: int = SCHEMA_VERSION
    device_id: str
    camera_id: str
    session: int = Field(ge=1, description="Agent start counter (increments on every start).")
    outbox_id: str = Field(
        min_length=1,
        description="Random id of the outbox database that assigned `seq` (new when it is rebuilt); "
        "`(device_id, outbox_id, seq)` identifies a message.",
    )
    seq: int = Field(ge=1, description="Per-outbox message sequence number, monotonic across restarts.")
    historical: bool = Field(False, description="True when this copy was replayed from the outbox.")
    aggregate: Aggregate | None = Field(None, description="Present in `aggregate` counts mode.")


class TrackEventInput(_Strict):
    """What the agent core passes to `AgentPublisher.publish_track_event`."""

    event: Literal["new", "end"] = Field(description="`new` when a track is confirmed, `end` when it is dropped.")
    track_id: int = Field(ge=0)
    first_seen: UtcDatetime = Field(description="Capture time the track was first seen.")
    last_seen: UtcDatetime = Field(description="Capture time the track was last seen.")
    frames: int = Field(ge=1, description="Frames in which the track had a detection.")
    max_score: float = Field(ge=0, le=1, description="Highest detector score along the track.")


class TrackEventPayload(TrackEventInput):
    """`…/{camera_id}/tracks`."""

    schema_version: int = SCHEMA_VERSION
    device_id: str
    camera_id: str
    session: int = Field(ge=1)
    historical: bool = False


class CameraStats(_Strict):
    status: CameraState | None = Field(None, description="Current camera status.")
    camera_fps: float | None = Field(None, ge=0, description="Frames/s delivered by the camera.")
    processed_fps: float | None = Field(None, ge=0, description="Frames/s that went through the detector.")
    skipped_fps: float | None = Field(None, ge=0, description="Frames/s dropped as stale (latest-frame policy).")
    inference_ms_p50: float | None = Field(None, ge=0)
    inference_ms_p95: float | None = Field(None, ge=0)
    reconnects: int | None = Field(None, ge=0, description="Stream reconnects since start.")
    frames_skipped: int | None = Field(None, ge=0, description="Frames dropped as stale since start (total).")
    frames: int | None = Field(None, ge=0, description="Frames processed since start.")
    unique_count: int | None = Field(None, ge=0)


class EvidenceStats(_Strict):
    """Evidence writer figures (cumulative since start)."""

    paused_low_space: bool = Field(description="Evidence is off: free space is below `evidence.min_free_mb`.")
    bytes: int = Field(ge=0, description="Bytes of evidence on disk (within `evidence.max_total_mb`).")
    snapshots: int = Field(ge=0, description="Snapshots written.")
    deleted: int = Field(ge=0, description="Files deleted by the quota, oldest first.")
    dropped_busy: int = Field(ge=0, description="Frames not written because the writer was busy.")
    skipped_low_space: int = Field(ge=0, description="Frames not written because evidence was paused.")
    errors: int = Field(ge=0, description="Frames whose writing failed (logged).")


class StatsInput(_Strict):
    """What the agent core passes to `AgentPublisher.publish_stats` (every field optional)."""

    cameras: dict[str, CameraStats] = Field(default_factory=dict, description="Per-camera figures.")
    cpu_temp_c: float | None = Field(None, description="CPU temperature where readable.")
    gpu_temp_c: float | None = Field(None, description="GPU temperature where readable.")
    cpu_percent: float | None = Field(None, ge=0)
    rss_mb: float | None = Field(None, ge=0, description="Agent resident memory.")
    evidence: EvidenceStats | None = Field(None, description="Snapshots / annotated video, when enabled.")


class StatsPayload(StatsInput):
    """`…/stats` (QoS 0, not stored: a lost stats message is replaced by the next one)."""

    schema_version: int = SCHEMA_VERSION
    device_id: str
    ts: UtcDatetime
    session: int
    uptime_s: float = Field(ge=0)
    software_version: str
    mqtt_reconnects: int = Field(ge=0, description="Broker reconnects since start.")
    outbox_depth: int = Field(ge=0, description="Messages waiting in the outbox for a broker acknowledgement.")
    dropped_by_policy: int = Field(ge=0, description="Outbox messages dropped by the size/age bound (ever).")
    inbound_rejected: int = Field(ge=0, description="Inbound messages rejected as malformed since start.")
    outbox_id: str | None = Field(None, description="Random id of the outbox database (see counts).")
    rejected_by_broker: int = Field(
        0,
        ge=0,
        description="Negative PUBACKs for stored messages since start (each row stays in the outbox and is retried).",
    )
    refused_waiting: int = Field(0, ge=0, description="Refused messages waiting for their retry.")
    handler_errors: int = Field(0, ge=0, description="Inbound command handlers that raised, since start.")
    not_stored: dict[str, int] = Field(
        default_factory=dict,
        description="Messages that could not be written to the outbox (disk full, I/O "
        "error) since start, by kind (`counts`, `tracks`); detection went on.",
    )
    session_takeovers: int = Field(
        0,
        ge=0,
        description="Times the broker disconnected us for another client with "
        "our client id (a second agent with the same device_id).",
    )


UpdateStateName = Literal[
    "idle",
    "downloading",
    "verifying",
    "staging",
    "checking",
    "swapping",
    "probation",
    "committed",
    "rolled_back",
    "failed",
]


class UpdateStateInput(_Strict):
    """What the agent passes to `AgentPublisher.set_update_state` (`edge_agent.update.manager.state_payload`)."""

    schema_version: int = SCHEMA_VERSION
    state: UpdateStateName = Field(description="Where the latest update stands; `idle`: none yet.")
    id: int | None = Field(None, ge=1, description="Update number on this device (one per announcement acted on).")
    name: str | None = Field(None, description="Model name of the update.")
    version: int | None = Field(None, ge=0, description="Model version the update installs.")
    rollback: bool | None = Field(None, description="True for an explicit, signed rollback announcement.")
    progress: int | None = Field(None, ge=0, description="Bytes downloaded so far.")
    size: int | None = Field(None, ge=0, description="Bundle size in bytes, as signed in the announcement.")
    error_code: str | None = Field(None, description="Why it failed or rolled back (stable code).")
    error: str | None = Field(None, description="Human-readable reason.")


class UpdateStatePayload(UpdateStateInput):
    """Retained `…/model/update`: the device's current update state (re-sent on every connect)."""

    device_id: str
    ts: UtcDatetime = Field(description="When this state was reached (UTC).")


class UpdateResultPayload(_Strict):
    """`…/model/result` (stored in the outbox, QoS 1, not retained): one event per update transition or refusal."""

    schema_version: int = SCHEMA_VERSION
    device_id: str
    ts: UtcDatetime = Field(description="When it happened (UTC).")
    event: str = Field(
        description="`accepted`, a state name (`verifying` … `probation`, `committed`, `rolled_back`, `failed`) "
        "or `refused` (an announcement that opened no update)."
    )
    state: UpdateStateName | None = Field(None, description="The update's state after the event (None: refused).")
    ok: bool | None = Field(
        None, description="The outcome: true at `committed`; false at `failed`, `rolled_back`, `refused`."
    )
    id: int | None = Field(None, ge=1, description="Update number on this device.")
    name: str | None = None
    version: int | None = Field(None, ge=0)
    rollback: bool | None = None
    error_code: str | None = Field(None, description="Stable reason code (see docs/mqtt.md).")
    error: str | None = None
    check: dict[str, Any] | None = Field(None, description="Staging check report (backend, golden, latency_ms, …).")
    probation: dict[str, Any] | None = Field(None, description="Probation figures (frames, errors, fps) at its end.")
    historical: bool = Field(False, description="True when this copy was replayed from the outbox.")

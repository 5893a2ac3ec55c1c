"""Response and request models: they make the OpenAPI document (at /docs and /openapi.json) say what comes back."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class CameraOut(BaseModel):
    camera_id: str
    status: str | None = Field(None, description="online / offline / disabled (retained camera status).")
    status_at: float | None = Field(None, description="When the status began (epoch s, shore clock).")
    last_seen: float | None = Field(None, description="Last live message from this camera (epoch s).")
    last_ts: float | None = Field(None, description="Capture time of the latest count (epoch s).")
    last_seq: int | None = None
    last_count: int | None = Field(None, description="Starfish in view in the latest frame.")
    last_unique: int | None = Field(None, description="Distinct tracks since the agent started or was reset.")
    session: int | None = None
    model: str | None = None


class DeviceOut(BaseModel):
    device_id: str
    status: str | None = Field(None, description="online / stopped / offline (Last Will).")
    status_at: float | None = None
    last_seen: float | None = Field(None, description="Last live message from the device (epoch s).")
    first_seen: float | None = None
    model: dict[str, Any] | None = Field(None, description="Retained `…/model`: name, version, variant, back end.")
    stats: dict[str, Any] | None = Field(None, description="Latest `…/stats` (fps, outbox depth, …).")
    stats_at: float | None = None
    update_state: dict[str, Any] | None = Field(None, description="Retained `…/model/update`, when devices send it.")
    update_state_at: float | None = None
    last_result: dict[str, Any] | None = Field(None, description="Latest `…/model/result` event.")
    cameras: list[CameraOut]


class SeriesColumns(BaseModel):
    minute: list[int] = Field(description="Start of each minute (epoch s).")
    frames: list[int] = Field(description="Frames processed in the minute.")
    mean: list[float] = Field(description="Mean starfish in view over the minute's frames.")
    max: list[int] = Field(description="Most starfish in view in one frame.")
    unique: list[int] = Field(description="Highest unique count reached in the minute.")


class SeriesOut(BaseModel):
    device_id: str
    start: int
    end: int
    cameras: dict[str, SeriesColumns] = Field(description="Per camera, aligned columns (minutes with data only).")


class TotalsOut(BaseModel):
    unique: int = Field(description="Unique starfish counted in the window (rise of unique_count per session).")
    frames: int
    minutes: int = Field(description="Minutes with data.")
    starfish_per_minute: float
    mean_in_view: float
    first: float | None
    last: float | None
    cameras: int


class SurveyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    start: float = Field(description="Window start (epoch s).")
    end: float = Field(description="Window end (epoch s), after start.")
    device_id: str | None = Field(None, description="Limit to one device (default: the whole fleet).")
    camera_id: str | None = Field(None, description="Limit to one camera of that device.")


class SurveyOut(BaseModel):
    kind: str = Field(description="`window` (named, saved) or `session` (one agent run of one device).")
    id: int | None = None
    name: str
    start: float
    end: float
    device_id: str | None = None
    camera_id: str | None = None
    session: int | None = None
    totals: TotalsOut


class HealthOut(BaseModel):
    engine: str
    ingest: dict[str, Any] | None = Field(None, description="Ingest counters, when ingest runs in this process.")
    rejects: list[dict[str, Any]] = Field(description="Messages counted and ignored, by reason.")

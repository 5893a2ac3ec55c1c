"""Typed configuration of the device's update manager (`UpdateConfig`), torch-free."""

from __future__ import annotations

import platform
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator


def default_platform() -> str:
    """This device's platform tag as announcements name it: ``linux-<machine>`` (``linux-aarch64`` on a Jetson)."""
    return f"{platform.system().lower()}-{platform.machine().lower()}"


class UpdateConfig(BaseModel):
    """Over-the-air model updates: where bundles go, what is accepted, how downloads and checks behave."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models_dir: Path = Field(
        description="Holds `versions/<v>/` (staged bundles), `downloads/` (partial and complete .tar files) and the "
        "`current` link the agent loads at start-up."
    )
    release_keys: list[Path] = Field(
        min_length=1, description="ed25519 public keys (PEM) whose signature on an announcement is accepted."
    )
    platform: str = Field(default_factory=default_platform, description="This device's platform tag.")
    max_bundle_bytes: int = Field(
        512 << 20, ge=1, description="Largest bundle accepted; an announcement naming more is refused."
    )
    max_announcement_bytes: int = Field(64 << 10, ge=256, description="Largest announcement payload parsed.")
    connect_timeout_s: float = Field(10.0, gt=0, description="TCP/TLS connect timeout of a download.")
    stall_timeout_s: float = Field(
        30.0, gt=0, description="A download that receives no byte for this long is cut and retried (resumed)."
    )
    max_download_s: float = Field(
        3600.0, gt=0, description="Upper bound on one download attempt (a server dribbling bytes forever)."
    )
    retries: int = Field(5, ge=0, le=100, description="Download attempts after the first, for transient failures.")
    backoff_initial_s: float = Field(1.0, ge=0, description="Wait before the first retry; doubles each time.")
    backoff_max_s: float = Field(300.0, ge=0, description="Longest wait between retries.")
    latency_budget_factor: float = Field(
        1.5, gt=0, description="The candidate's median latency may be at most this times the running model's."
    )
    latency_budget_ms: float | None = Field(
        None, gt=0, description="Absolute latency budget (median ms per frame); used when no running model is known."
    )
    check_runs: int = Field(5, ge=1, le=1000, description="Timed inferences in the latency check (after warm-up).")
    memory_budget_mb: float | None = Field(
        None,
        gt=0,
        description="Largest growth of the agent's resident memory from loading and running the candidate "
        "(None: not capped; the check still reports it).",
    )
    min_available_mb: float = Field(
        256.0,
        ge=0,
        description="Memory the system must still have available with the candidate loaded beside the running "
        "model (both stay loaded through probation); 0 turns the check off.",
    )
    golden_iou: float = Field(0.5, gt=0, le=1, description="IoU a golden detection must reach to match.")
    golden_score_tolerance: float = Field(0.1, ge=0, le=1, description="Largest score difference on a match.")
    probation_max_restarts: int = Field(
        2, ge=0, description="Agent restarts during probation beyond which the update rolls back (crash loop)."
    )
    probation_frames: int = Field(
        100, ge=1, description="Frames the new model must process during probation before it can be committed."
    )
    probation_s: float = Field(
        60.0, ge=0, description="Seconds probation lasts at least (and `probation_frames` frames): then commit."
    )
    probation_max_errors: int = Field(
        3, ge=0, description="Detection errors during probation beyond which the update rolls back at once."
    )
    probation_keep_previous: bool = Field(
        True,
        description="Keep the previous model loaded (warm) during probation, so a rollback switches back between "
        "two frames instead of after a reload; costs its memory until the update commits.",
    )
    probation_max_fps_drop: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Roll back when the processed fps during probation falls by more than this share of the "
        "previous model's fps just before the swap (0.5: below half).",
    )
    backends: list[str] = Field(
        default_factory=lambda: ["onnxruntime"],
        min_length=1,
        description="Back ends tried for the staging check (the agent passes its own list).",
    )
    variant: str | None = Field(
        None,
        description="Variant the staging check loads (the agent passes its `detector.variant`; None: the back "
        "end's choice, as in the agent).",
    )
    threads: int | None = Field(
        None, ge=1, le=64, description="onnxruntime threads of the staging check (the agent passes its own)."
    )
    engine_cache_dir: Path | None = Field(
        None,
        description="Where the staging check builds TensorRT engines (the agent passes its `detector."
        "engine_cache_dir`; None: beside the staged version, versions/<v>.trt-cache), so the swap finds them.",
    )

    @model_validator(mode="after")
    def _backoff(self) -> UpdateConfig:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        return self

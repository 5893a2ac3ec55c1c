"""Settings of the out-of-distribution validation renderer, validated up front (bad values fail with one message)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

RENDERER_VERSION = "1.0.0"


class OodConfig(BaseModel):
    """Everything that determines an out-of-distribution validation set; same config -> identical bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    videos: int = Field(default=6, ge=1, le=1000, description="Number of videos (video_id 0..videos-1).")
    frames: int = Field(default=150, ge=1, le=100_000, description="Frames per video.")
    seed: int = Field(default=0, ge=0, le=2**63 - 1, description="Seed; the whole dataset is a pure function of it.")
    width: int = Field(default=1280, ge=64, le=4096, description="Frame width in pixels.")
    height: int = Field(default=720, ge=64, le=4096, description="Frame height in pixels.")
    fps: float = Field(default=10.0, gt=0, le=120, description="Frame rate written into the .mp4 files.")
    sequence_length: int = Field(default=50, ge=5, le=100_000, description="Mean frames per camera pass.")
    min_size: int = Field(default=16, ge=4, description="Smallest starfish diameter in pixels at the sequence's zoom.")
    max_size: int = Field(default=170, ge=4, description="Largest starfish diameter in pixels at the sequence's zoom.")
    min_visible_fraction: float = Field(
        default=0.25,
        ge=0.0,
        le=1.0,
        description="A box is written only when at least this share of the starfish's whole projected area is "
        "visible (in frame and not hidden by another starfish or a foreground frond).",
    )
    jpeg_quality: int = Field(default=90, ge=10, le=100, description="JPEG quality of train_images.")
    write_video: bool = Field(default=True, description="Also write videos/video_{id}.mp4.")

    @field_validator("width", "height")
    @classmethod
    def _even(cls, value: int, info: ValidationInfo) -> int:
        # 4:2:0 video needs even sizes; an odd one would be cropped by the encoder and the .mp4 would not match.
        if value % 2:
            raise ValueError(f"{info.field_name} must be even (video encoders need even frame sizes), got {value}")
        return value

    @model_validator(mode="after")
    def _sizes(self) -> OodConfig:
        if self.min_size > self.max_size:
            raise ValueError(f"min_size ({self.min_size}) must not exceed max_size ({self.max_size})")
        if self.min_size > min(self.width, self.height) // 2:
            raise ValueError(f"min_size ({self.min_size}) is too large for a {self.width}x{self.height} frame")
        return self

    @property
    def effective_max_size(self) -> int:
        """Large starfish capped at 40 % of the shorter side so small test frames stay sensible."""
        return max(self.min_size, min(self.max_size, int(0.4 * min(self.width, self.height))))

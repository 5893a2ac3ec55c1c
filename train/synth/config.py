"""Settings of the synthetic reef generator, validated up front so impossible requests fail with a clear message."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

GENERATOR_VERSION = "1.2.0"

# Named looks of the generator (fail loudly on anything else). "classic" is the original reef, byte for byte, so
# the held-out video and every test built on it stay put; "randomized" is domain randomization (see randomize.py).
STYLES = ("classic", "randomized")

# The real Kaggle set is ~80 % empty frames. Half is the default here so that small synthetic sets still give a
# detector enough positives to learn from while keeping "say zero" a frequent answer; `--empty-fraction 0.8`
# reproduces the real balance.
DEFAULT_EMPTY_FRACTION = 0.5


class SynthConfig(BaseModel):
    """Everything that determines a synthetic dataset; same config (seed included) -> identical bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    videos: int = Field(3, ge=1, le=1000, description="Number of videos (video_id 0..videos-1).")
    frames: int = Field(100, ge=1, le=100_000, description="Frames per video.")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seed; the whole dataset is a pure function of it.")
    width: int = Field(1280, ge=64, le=4096, description="Frame width in pixels.")
    height: int = Field(720, ge=64, le=4096, description="Frame height in pixels.")
    fps: float = Field(10.0, gt=0, le=120, description="Frame rate of the camera (sets motion per frame).")
    empty_fraction: float = Field(
        DEFAULT_EMPTY_FRACTION, ge=0.0, le=1.0, description="Target fraction of frames without any starfish."
    )
    sequence_length: int = Field(
        60, ge=4, le=100_000, description="Mean frames per sequence; each sequence is a separate pass over the reef."
    )
    min_size: int = Field(20, ge=4, description="Smallest starfish diameter in pixels (far from the camera).")
    max_size: int = Field(150, ge=4, description="Largest starfish diameter in pixels (close to the camera).")
    occlusion_probability: float = Field(0.3, ge=0.0, le=1.0, description="Chance that coral partly covers a starfish.")
    min_visible_fraction: float = Field(
        0.4,
        ge=0.0,
        le=1.0,
        description="A box is written only when at least this share of the starfish's in-frame pixels is not "
        "hidden by coral or another starfish.",
    )
    crossing_seconds: tuple[float, float] = Field(
        (4.0, 10.0), description="Range of seconds a starfish takes to cross the frame (camera speed)."
    )
    jpeg_quality: int = Field(90, ge=10, le=100, description="JPEG quality of train_images.")
    write_video: bool = Field(True, description="Also write videos/video_{id}.mp4.")
    style: Literal["classic", "randomized"] = Field(
        "classic",
        description="classic: the original reef. randomized: domain randomization (distractors that are not COTS, "
        "starfish drawn in many styles, outbreak crowds, wide ranges of floor, water, light, blur and noise).",
    )
    outbreak_fraction: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="randomized style only: share of sequences that are COTS outbreaks (20-50 starfish in a frame).",
    )
    distractors_per_frame: tuple[int, int] = Field(
        (3, 14),
        description="randomized style only: range of the per-video density of distractors (things that are not "
        "COTS and never carry a box) per frame.",
    )
    workers: int = Field(0, ge=0, le=64, description="Render processes; 0 = one per CPU core, 1 = in-process.")

    @field_validator("width", "height")
    @classmethod
    def _even(cls, value: int, info: ValidationInfo) -> int:
        # MPEG-4 video stores 4:2:0 chroma: odd sizes get silently cropped by the encoder, so the .mp4 would no
        # longer match the JPEG frames.
        if value % 2:
            raise ValueError(f"{info.field_name} must be even (video encoders need even frame sizes), got {value}")
        return value

    @model_validator(mode="after")
    def _check_ranges(self) -> SynthConfig:
        if self.min_size > self.max_size:
            raise ValueError(f"min_size ({self.min_size}) must not exceed max_size ({self.max_size})")
        if self.min_size > min(self.width, self.height) // 2:
            raise ValueError(
                f"min_size ({self.min_size}) is too large for a {self.width}x{self.height} frame "
                f"(at most half the shorter side, {min(self.width, self.height) // 2})"
            )
        fewest, most = self.distractors_per_frame
        if not 0 <= fewest <= most <= 200:
            raise ValueError(f"distractors_per_frame must be 0 <= low <= high <= 200, got {self.distractors_per_frame}")
        low, high = self.crossing_seconds
        if not 0 < low <= high:
            raise ValueError(f"crossing_seconds must be 0 < low <= high, got {self.crossing_seconds}")
        return self

    @property
    def effective_max_size(self) -> int:
        """Large starfish are capped at 45 % of the shorter side so small test frames stay sensible."""
        return max(self.min_size, min(self.max_size, int(0.45 * min(self.width, self.height))))

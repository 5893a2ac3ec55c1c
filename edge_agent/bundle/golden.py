"""Golden frames (`golden.json` and its images): what each variant answered on a few held-out frames at export.

Written at export (`export.golden`), named with sha256 and size in the signed manifest's `golden` field (schema 3),
read by the device's staging check (`edge_agent.update.check`), which runs the variant it loaded on the frames and
compares with that variant's expectations. The format, strict like the manifest::

    {
      "schema_version": 1,
      "recorded_with": "onnxruntime 1.20.1 CPUExecutionProvider",
      "frames": ["golden_0.png", "golden_1.png", "golden_2.png"],
      "variants": {
        "int8": {
          "score_threshold": 0.57,            # the variant's own threshold (the manifest's threshold_for)
          "min_score": 0.0,                   # detections were recorded down to this score
          "detections": [                      # one list per frame, in `frames` order
            [{"box": [x1, y1, x2, y2], "score": 0.93, "label": 1}],
            [], []
          ]
        }
      }
    }

Boxes are in the golden image's pixels (what `Detector.detect` returns on it). Images are PNG (lossless: the device
decodes exactly the pixels export ran on), stored at the size the model's letterbox scales them to, so the device's
letterbox does not resize them again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_agent.bundle.errors import GoldenError
from edge_agent.bundle.manifest import GOLDEN_NAME, MAX_GOLDEN_BYTES, MAX_GOLDEN_FRAMES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GoldenDetection(_Strict):
    box: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2 in the golden image's pixels.")
    score: float = Field(ge=0.0, le=1.0, description="Score onnxruntime CPU gave at export.")
    label: int = Field(ge=0, description="Index into the manifest's classes.")


class VariantExpectations(_Strict):
    score_threshold: float = Field(ge=0.0, le=1.0, description="The variant's own score threshold.")
    min_score: float = Field(ge=0.0, le=1.0, description="Detections were recorded down to this score.")
    detections: tuple[tuple[GoldenDetection, ...], ...] = Field(description="Per frame, in `frames` order.")

    @model_validator(mode="after")
    def _floor(self) -> VariantExpectations:
        if self.min_score > self.score_threshold:
            raise ValueError(f"min_score {self.min_score} is above the score_threshold {self.score_threshold}")
        return self


class GoldenExpectations(_Strict):
    schema_version: Literal[1] = Field(1, description="golden.json format version.")
    recorded_with: str = Field(max_length=200, description="Back end and version the expectations came from.")
    frames: tuple[str, ...] = Field(min_length=1, max_length=MAX_GOLDEN_FRAMES, description="Golden image files.")
    variants: dict[str, VariantExpectations] = Field(min_length=1, description="Expectations by variant name.")

    @model_validator(mode="after")
    def _one_list_per_frame(self) -> GoldenExpectations:
        for name, expected in self.variants.items():
            if len(expected.detections) != len(self.frames):
                raise ValueError(
                    f"variant {name!r} has {len(expected.detections)} detection lists for {len(self.frames)} frames"
                )
        return self

    def to_json_bytes(self) -> bytes:
        # Compact: a few hundred detections per variant must stay far below `MAX_GOLDEN_BYTES`.
        return (json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")) + "\n").encode()


@dataclass(frozen=True)
class GoldenFiles:
    """What a bundle writer stores: the `golden.json` bytes and the image bytes by file name (in frame order)."""

    expectations: bytes
    frames: Mapping[str, bytes]

    def parsed(self) -> GoldenExpectations:
        return parse_golden(self.expectations)


def parse_golden(raw: bytes) -> GoldenExpectations:
    """Parse and validate `golden.json` bytes; `GoldenError` naming the problem otherwise."""
    if len(raw) > MAX_GOLDEN_BYTES:
        raise GoldenError(f"{GOLDEN_NAME} is {len(raw)} bytes, more than the {MAX_GOLDEN_BYTES} allowed")
    try:
        return GoldenExpectations.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()[:3]
        )
        raise GoldenError(f"{GOLDEN_NAME} is invalid: {problems}") from exc


def golden_files(
    frames: Mapping[str, bytes],
    variants: Mapping[str, tuple[float, float, Sequence[Sequence[GoldenDetection]]]],
    recorded_with: str,
) -> GoldenFiles:
    """Build the files from PNG ``frames`` (name -> bytes, in order) and per variant ``(score_threshold,
    min_score, detections per frame)``."""
    try:
        spec = GoldenExpectations(
            recorded_with=recorded_with,
            frames=tuple(frames),
            variants={
                name: VariantExpectations(
                    score_threshold=threshold,
                    min_score=floor,
                    detections=tuple(tuple(per_frame) for per_frame in detections),
                )
                for name, (threshold, floor, detections) in variants.items()
            },
        )
    except ValidationError as exc:
        raise GoldenError(f"cannot build {GOLDEN_NAME}: {exc}") from exc
    return GoldenFiles(spec.to_json_bytes(), dict(frames))

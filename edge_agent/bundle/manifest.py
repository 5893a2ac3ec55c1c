"""The bundle manifest schema (`manifest.json`), torch-free.

Every field of the bundle contract in DESIGN.md, validated strictly: unknown keys fail (`extra="forbid"`), a
missing field fails, and file names are plain names inside the bundle so a manifest can never point outside it.
The input/output specs default to the contract in `edge_agent.preprocess`, the one place that defines it.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge_agent import preprocess
from edge_agent.bundle.errors import ManifestError, UnsupportedSchemaError

# 2: variants carry their own best-F2 `score_threshold`. 3: the optional signed `golden` set (staging-check frames).
# 4: variants may carry `counting`, the settings their unique count was calibrated at. Versions 1-3 are still read.
SCHEMA_VERSION = 4
GOLDEN_SCHEMA_VERSION = 3  # the first schema with `golden`
COUNTING_SCHEMA_VERSION = 4  # the first schema with a variant's `counting`
# The first agent release that reads each schema: a release of a bundle announces it as its `min_agent_version`, so
# an older device refuses the announcement up front instead of downloading a bundle it cannot load.
AGENT_VERSION_FOR_SCHEMA = {COUNTING_SCHEMA_VERSION: "0.2.0"}
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
# The INT8 variant with uint8 activations for onnxruntime on CPUs; `int8` (zero-point-0 activations) is TensorRT's.
CPU_INT8_VARIANT = "int8_cpu"
RESERVED_NAMES = frozenset({MANIFEST_NAME, SIGNATURE_NAME})
# The golden expectations file (`edge_agent.bundle.golden`); its frames sit beside it.
GOLDEN_NAME = "golden.json"
MAX_GOLDEN_FRAMES = 16
MAX_GOLDEN_BYTES = 1 << 20  # golden.json
MAX_GOLDEN_IMAGE_BYTES = 16 << 20  # each golden image: the check decodes them in memory
# A manifest is a few KiB; anything near this cap is an attack or a mistake, and is refused before it is read whole.
MAX_MANIFEST_BYTES = 1 << 20

# torchvision's GeneralizedRCNNTransform defaults (ImageNet statistics), applied inside the exported graph.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_SAFE_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _sha256_hex(digest: str) -> str:
    if not _SHA256.match(digest):
        raise ValueError(f"sha256 must be 64 lower-case hex digits, got {digest!r}")
    return digest


# A sha256 digest as the bundle and the update announcements write it: 64 lower-case hex digits.
Sha256Hex = Annotated[str, AfterValidator(_sha256_hex)]
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Normalisation(_Strict):
    """How pixel values reach the network: the caller feeds `value_range`; mean/std are applied in the graph."""

    value_range: tuple[float, float] = Field((0.0, 1.0), description="Range of the values the caller feeds.")
    mean: tuple[float, float, float] = Field(IMAGENET_MEAN, description="Per-channel mean subtracted (RGB order).")
    std: tuple[float, float, float] = Field(IMAGENET_STD, description="Per-channel std divided by (RGB order).")
    applied: Literal["in-graph"] = Field(
        "in-graph", description="Where mean/std normalisation happens: inside the ONNX graph, not by the caller."
    )


class InputSpec(_Strict):
    """The single model input (see `edge_agent.preprocess`)."""

    name: str = Field(preprocess.INPUT_NAME, description="ONNX input name.")
    shape: tuple[Literal[1], Literal[3], int, int] = Field(description="Fixed NCHW shape: [1, 3, height, width].")
    dtype: Literal["float32"] = Field("float32", description="Element type of the input tensor.")
    colour_order: Literal["RGB"] = Field(preprocess.COLOUR_ORDER, description="Channel order of the input tensor.")
    normalisation: Normalisation = Field(default_factory=Normalisation, description="Pixel value contract.")
    resize: Literal["letterbox-top-left"] = Field(
        preprocess.RESIZE_RULE,
        description="Frame -> input rule: scale by min(W/w, H/h), place top-left, zero padding "
        "(`edge_agent.preprocess.letterbox`).",
    )

    @field_validator("shape")
    @classmethod
    def _positive(cls, shape: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        if shape[2] <= 0 or shape[3] <= 0:
            raise ValueError(f"input height and width must be positive, got {shape}")
        return shape

    @classmethod
    def for_size(cls, width: int, height: int) -> InputSpec:
        """The contract input for a ``width x height`` model."""
        return cls(shape=(1, 3, height, width))

    @property
    def height(self) -> int:
        return self.shape[2]

    @property
    def width(self) -> int:
        return self.shape[3]


class OutputSpec(_Strict):
    """The model outputs (see `edge_agent.preprocess`)."""

    names: tuple[str, str, str] = Field(
        preprocess.OUTPUT_NAMES, description="ONNX output names: boxes, scores, labels."
    )
    box_format: Literal["xyxy"] = Field("xyxy", description="Box layout of the `boxes` output, shape [N, 4].")
    coordinate_frame: Literal["input-pixels"] = Field(
        "input-pixels",
        description="Boxes in input-tensor pixels (`edge_agent.preprocess.boxes_to_source` maps them to the frame).",
    )
    labels_index: Literal["classes"] = Field("classes", description="`labels` values index the manifest's `classes`.")


class BundleFile(_Strict):
    """A file inside the bundle that the signature covers: its plain name, sha256 and size."""

    file: str = Field(description="File name inside the bundle (no directories).")
    sha256: Sha256Hex = Field(description="Lower-case hex sha256 of the file.")
    size: int = Field(ge=1, description="File size in bytes.")

    @field_validator("file")
    @classmethod
    def _plain_name(cls, file: str) -> str:
        if not _SAFE_FILE.match(file) or file in RESERVED_NAMES or file in (".", ".."):
            raise ValueError(f"file must be a plain file name inside the bundle, got {file!r}")
        return file


class Counting(_Strict):
    """The settings a variant's unique count was calibrated at (schema 4), chosen by the export chain on clips
    with known counts, and what they gave there.

    The best-F2 threshold scores single frames; a count also pays for every false box that survives ``min_hits``
    frames, so the count's optimum can sit far from the frame metric's (`export.counting`).
    """

    score_threshold: float = Field(ge=0.0, le=1.0, description="Detector threshold the agent counts at.")
    min_hits: int = Field(ge=1, le=100, description="Tracker matches before a track counts as a starfish.")
    selected_on: tuple[str, ...] = Field(
        min_length=1, description="The clip sets the setting was chosen on (names, as the chain was given them)."
    )
    mean_clip_error: float = Field(
        ge=0.0, description="Mean per-clip relative count error there (averaged over the sets), at this setting."
    )


class Variant(BundleFile):
    """One model file of the bundle (e.g. `fp32`, `int8`) with what was measured on it."""

    f2: float | None = Field(
        description="F2 on the held-out validation video at `score_threshold` (None: not measured)."
    )
    map50: float | None = Field(description="COCO mAP@0.5 on the held-out validation video (None: not measured).")
    latency_ms: float | None = Field(
        description="Median single-frame latency measured at export time, CPU onnxruntime (None: not measured)."
    )
    score_threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="This variant's own best-F2 threshold on validation (None: use the manifest's `score_threshold`).",
    )
    counting: Counting | None = Field(
        None, description="Counting settings calibrated for this variant (schema 4; None: the agent's defaults)."
    )


class GoldenSet(_Strict):
    """The golden frames of the staging check (schema 3): `golden.json` and the images it names, all signed.

    `golden.json` (`edge_agent.bundle.golden`) holds, per variant, the detections onnxruntime CPU gave on each
    frame at export time; the device's staging check (`edge_agent.update.check`) runs the variant it loaded on
    the frames and compares.
    """

    expectations: BundleFile = Field(description=f"`{GOLDEN_NAME}`: expected detections per variant and frame.")
    frames: tuple[BundleFile, ...] = Field(
        min_length=1, max_length=MAX_GOLDEN_FRAMES, description="The golden images (PNG), in golden.json's order."
    )

    @field_validator("expectations")
    @classmethod
    def _golden_name(cls, entry: BundleFile) -> BundleFile:
        if entry.file != GOLDEN_NAME:
            raise ValueError(f"golden expectations must be stored as {GOLDEN_NAME}, got {entry.file!r}")
        return entry

    @model_validator(mode="after")
    def _bounded(self) -> GoldenSet:
        if self.expectations.size > MAX_GOLDEN_BYTES:
            raise ValueError(f"{GOLDEN_NAME} is {self.expectations.size} bytes, more than {MAX_GOLDEN_BYTES}")
        for frame in self.frames:
            if frame.size > MAX_GOLDEN_IMAGE_BYTES:
                raise ValueError(f"golden frame {frame.file} is {frame.size} bytes, more than {MAX_GOLDEN_IMAGE_BYTES}")
        return self

    def files(self) -> tuple[BundleFile, ...]:
        return (self.expectations, *self.frames)


class TrainingInfo(_Strict):
    """Provenance: what the model was trained from (None where it does not apply, e.g. an untrained demo)."""

    config_digest: str | None = Field(description="sha256 of the canonical training/model config.")
    data_fingerprint: str | None = Field(description="Fingerprint of the training data (from the dataset reader).")
    checkpoint_sha256: str | None = Field(description="sha256 of the checkpoint file the bundle was exported from.")
    backbone_weights: dict[str, str] | None = Field(
        None,
        description="Pretrained backbone weights the model started from: package, version, file, sha256, licence "
        "(None: trained from scratch).",
    )


class Manifest(_Strict):
    """`manifest.json` of a model bundle; `manifest.sig` signs its exact bytes."""

    schema_version: int = Field(ge=1, description="Manifest schema version; a runtime refuses newer ones.")
    name: str = Field(description="Model name (lower case; the version sequence is per name).")
    version: int = Field(ge=1, description="Monotonically increasing version per model name.")
    created_at: datetime = Field(description="UTC creation time, ISO 8601.")
    parent_version: int | None = Field(description="Version this one replaces or was derived from (None: first).")
    classes: tuple[str, ...] = Field(min_length=2, description="Class names indexed by label; index 0 is background.")
    input: InputSpec = Field(description="Input tensor contract.")
    outputs: OutputSpec = Field(description="Output tensors contract.")
    score_threshold: float = Field(
        ge=0.0,
        le=1.0,
        description="Best-F2 score threshold found on validation for the default variant (and for every variant "
        "that carries none of its own).",
    )
    default_variant: str = Field(description="Variant the runtime uses unless told otherwise.")
    variants: dict[str, Variant] = Field(min_length=1, description="Model files by variant name (fp32, int8, ...).")
    training: TrainingInfo = Field(description="Training provenance.")
    golden: GoldenSet | None = Field(
        None, description="Signed golden frames for the device's staging check (schema 3; None: none shipped)."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(f"name must match {_NAME.pattern}, got {name!r}")
        return name

    @field_validator("created_at")
    @classmethod
    def _utc(cls, created_at: datetime) -> datetime:
        if created_at.tzinfo is None or created_at.utcoffset() is None:
            raise ValueError("created_at must carry a timezone (UTC)")
        return created_at.astimezone(timezone.utc)

    @field_validator("classes")
    @classmethod
    def _background_first(cls, classes: tuple[str, ...]) -> tuple[str, ...]:
        if classes[0] != "background":
            raise ValueError(f"classes[0] must be 'background', got {classes[0]!r}")
        if len(set(classes)) != len(classes):
            raise ValueError(f"class names must be unique, got {list(classes)}")
        return classes

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.schema_version > SCHEMA_VERSION:
            # Also checked before validation (parse_manifest); kept here so constructing one in code fails too.
            raise ValueError(f"schema_version {self.schema_version} is newer than supported {SCHEMA_VERSION}")
        if self.parent_version is not None and self.parent_version >= self.version:
            raise ValueError(f"parent_version {self.parent_version} must be lower than version {self.version}")
        if self.default_variant not in self.variants:
            raise ValueError(f"default_variant {self.default_variant!r} is not one of {sorted(self.variants)}")
        if self.golden is not None and self.schema_version < GOLDEN_SCHEMA_VERSION:
            raise ValueError(f"golden needs schema_version {GOLDEN_SCHEMA_VERSION}, got {self.schema_version}")
        counted = sorted(name for name, v in self.variants.items() if v.counting is not None)
        if counted and self.schema_version < COUNTING_SCHEMA_VERSION:
            raise ValueError(
                f"counting settings (variants {counted}) need schema_version {COUNTING_SCHEMA_VERSION}, "
                f"got {self.schema_version}"
            )
        files = [entry.file for _, entry in self.files()]
        if len(set(files)) != len(files):
            raise ValueError(f"variants and golden frames must name distinct files, got {files}")
        return self

    def files(self) -> list[tuple[str, BundleFile]]:
        """Every file the signature covers besides the manifest, with a label for messages (``variant 'int8'``,
        ``golden``)."""
        named: list[tuple[str, BundleFile]] = [(f"variant {name!r}", entry) for name, entry in self.variants.items()]
        if self.golden is not None:
            named += [("golden", entry) for entry in self.golden.files()]
        return named

    def threshold_for(self, variant: str) -> float:
        """The best-F2 score threshold of ``variant``: its own when the manifest records one, else the default."""
        own = self.variants[variant].score_threshold
        return self.score_threshold if own is None else own

    def min_agent_version(self) -> str:
        """The oldest agent release that reads this manifest's schema ("0": any)."""
        from edge_agent.update.announcement import version_tuple  # it imports this module

        needed = [v for schema, v in AGENT_VERSION_FOR_SCHEMA.items() if schema <= self.schema_version]
        return max(needed, key=version_tuple, default="0")

    def counting_for(self, variant: str) -> Counting | None:
        """The counting settings calibrated for ``variant``, if the bundle carries them."""
        return self.variants[variant].counting

    def to_json_bytes(self) -> bytes:
        """Canonical serialisation (sorted keys, UTF-8): the exact bytes that get signed."""
        data = self.model_dump(mode="json")
        if data["golden"] is None:
            del data["golden"]  # a manifest without golden frames reads the same as before schema 3
        for variant in data["variants"].values():
            if variant["counting"] is None:
                del variant["counting"]  # likewise for a variant without counting settings (schema 4)
        return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


class _DuplicateKey(ValueError):
    pass


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of two equal keys; a signed manifest must mean one thing to every reader, so refuse.
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise _DuplicateKey(key)
        data[key] = value
    return data


def parse_manifest(raw: bytes) -> Manifest:
    """Parse and validate manifest bytes; raise `ManifestError` / `UnsupportedSchemaError` naming the problem.

    Refused before validation: more than `MAX_MANIFEST_BYTES`, invalid UTF-8 / JSON, a key repeated in one object,
    nesting too deep for the parser.
    """
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{MANIFEST_NAME} is {len(raw)} bytes, more than the {MAX_MANIFEST_BYTES} allowed")
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_refuse_duplicates)
    except _DuplicateKey as exc:
        raise ManifestError(f"{MANIFEST_NAME} repeats the key {exc.args[0]!r} in one object") from exc
    except RecursionError as exc:
        raise ManifestError(f"{MANIFEST_NAME} is nested too deeply to be a manifest") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{MANIFEST_NAME} is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"{MANIFEST_NAME} must hold a JSON object, got {type(data).__name__}")
    schema = data.get("schema_version")
    if isinstance(schema, int) and not isinstance(schema, bool) and schema > SCHEMA_VERSION:
        raise UnsupportedSchemaError(
            f"{MANIFEST_NAME} has schema_version {schema}; this runtime supports up to {SCHEMA_VERSION} (upgrade it)"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise ManifestError(f"{MANIFEST_NAME} is invalid: {problems}") from exc

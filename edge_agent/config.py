"""The edge agent's configuration: one pydantic model per component, unknown keys rejected, every field described.

Sources, highest priority first: environment variables ``STARFISH_<FIELD>`` (nested with ``__``, e.g.
``STARFISH_MQTT__HOST=broker.local`` or ``STARFISH_DETECTOR__BACKENDS='["onnxruntime"]'``), then the YAML file,
then the defaults below. Environment wins over the file so one image/unit file can be re-pointed per device
without editing YAML (and secrets such as the MQTT password never need to be in the file).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from edge_agent.mqtt.config import MqttConfig
from edge_agent.mqtt.topics import RESERVED_CAMERA_IDS, check_camera_id, check_level, ha_id
from edge_agent.update.config import UpdateConfig

BackendName = Literal["tensorrt", "onnxruntime"]
BACKENDS: tuple[BackendName, ...] = ("tensorrt", "onnxruntime")


class ConfigError(ValueError):
    """The agent configuration is unreadable or invalid; the message names every offending field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CameraConfig(_Strict):
    """One video source. Capture runs on its own thread; inference always takes the newest frame."""

    id: str = Field(
        description="Camera id used in topics (`starfish/{device}/{id}/counts`): 1-64 of A-Z a-z 0-9 "
        f"_ . -; reserved: {', '.join(sorted(RESERVED_CAMERA_IDS))}."
    )
    source: int | str = Field(
        description="What to open: a V4L2 index (0) or device path (/dev/video0); an RTSP/HTTP/UDP URL; a video "
        "file path; or a GStreamer pipeline ending in `appsink` (Jetson CSI: `nvarguscamerasrc ! ... ! appsink`)."
    )
    enabled: bool = Field(True, description="A disabled camera is reported `disabled` and never opened.")
    loop: bool = Field(False, description="Video files only: start again at the end instead of finishing.")
    read_mode: Literal["latest", "every_frame"] = Field(
        "latest",
        description="`latest`: when inference is slower than the source, stale frames are dropped (and counted) so "
        "latency never builds up - right for live cameras. `every_frame`: capture waits for inference, nothing is "
        "dropped - for evaluating a recorded clip.",
    )
    realtime: bool | None = Field(
        None,
        description="Video files only: pace reads at the file's frame rate like a live camera. Default: true in "
        "`latest` mode, false in `every_frame` mode.",
    )
    target_fps: float | None = Field(
        None, gt=0, le=240, description="Process at most this many frames per second from this camera (None: all)."
    )
    reconnect_initial_s: float = Field(0.5, gt=0, le=60, description="First reconnect delay after a failure.")
    reconnect_max_s: float = Field(30.0, gt=0, le=3600, description="Cap of the exponential reconnect delay.")
    open_timeout_s: float = Field(5.0, gt=0, le=120, description="Give up opening a network stream after this.")
    read_timeout_s: float = Field(3.0, gt=0, le=120, description="A network stream silent this long is lost.")

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return check_camera_id(value)  # the one rule the topics use too

    @field_validator("source")
    @classmethod
    def _source(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 0:
            raise ValueError(f"a device index must be >= 0, got {value}")
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _delays(self) -> CameraConfig:
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s must be >= reconnect_initial_s")
        return self


class DetectorConfig(_Strict):
    """Which model bundle to run and on which back end."""

    bundle: Path = Field(description="Model bundle directory (or .tar); verified against `trusted_keys` first.")
    trusted_keys: list[Path] = Field(
        min_length=1, description="ed25519 public key files (PEM) whose signature on the bundle is accepted."
    )
    variant: str | None = Field(
        None,
        description="Bundle variant to run (fp32, int8, int8_cpu, ...); None: the "
        "bundle's default, or int8_cpu instead of int8 for onnxruntime on CPU only.",
    )
    backends: list[BackendName] = Field(
        default_factory=lambda: list(BACKENDS),
        min_length=1,
        description="Back ends in order of preference; the first one available on this machine is used.",
    )
    score_threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Keep detections at or above this score; None: the variant's calibrated counting threshold "
        "when the bundle carries one, else its best-F2 threshold.",
    )
    threads: int | None = Field(None, ge=1, le=64, description="onnxruntime intra-op threads (None: its default).")
    engine_cache_dir: Path | None = Field(
        None, description="Where built TensorRT engines are cached (None: beside the bundle)."
    )
    allow_rollback: bool = Field(
        False,
        description="Run a bundle older than the highest version this device has accepted (an explicit, logged "
        "rollback; `starfish agent run --allow-rollback` sets it for one start).",
    )

    @field_validator("backends")
    @classmethod
    def _unique(cls, value: list[BackendName]) -> list[BackendName]:
        if len(set(value)) != len(value):
            raise ValueError(f"each back end may appear once, got {value}")
        return value


class TrackerConfig(_Strict):
    """Multi-object tracker that turns detections into distinct starfish."""

    iou_threshold: float = Field(0.2, gt=0, lt=1, description="Minimum IoU between prediction and detection.")
    max_age_s: float = Field(
        1.5,
        ge=0,
        le=600,
        description="Seconds of capture time a confirmed track may go unseen before it ends "
        "(frame-rate independent: the same at 2 and at 30 processed frames per second).",
    )
    min_hits: int | None = Field(
        None,
        ge=1,
        le=100,
        description="Detections before a track counts as a starfish; None: the variant's calibrated counting "
        "`min_hits` when the bundle carries one, else 3.",
    )
    low_score_threshold: float | None = Field(
        0.1,
        ge=0,
        le=1,
        description="ByteTrack's second pass: detections from this score up to the detector's "
        "threshold only keep already-confirmed tracks alive (never start one, never counted alone). None: off.",
    )
    low_iou_threshold: float = Field(0.5, gt=0, lt=1, description="Minimum IoU for a low-score match.")


class SnapshotConfig(_Strict):
    """Rate-limited JPEGs of frames with detections (boxes drawn), for review and retraining data."""

    enabled: bool = Field(False, description="Write snapshots.")
    directory: Path = Field(Path("snapshots"), description="Where JPEGs go (created if missing).")
    min_interval_s: float = Field(10.0, ge=0, le=86400, description="At most one snapshot per camera per interval.")
    min_count: int = Field(1, ge=0, description="Only frames with at least this many detections.")
    raw_copy: bool = Field(True, description="Also keep the unannotated frame (retraining needs clean pixels).")
    jpeg_quality: int = Field(90, ge=10, le=100, description="JPEG quality.")


class VideoOutputConfig(_Strict):
    """Optional annotated video written per camera."""

    enabled: bool = Field(False, description="Write an annotated video per camera.")
    directory: Path = Field(Path("annotated"), description="Where `{camera_id}.mp4` files go.")
    fps: float = Field(10.0, gt=0, le=240, description="Frame rate written into the file.")
    segment_s: float = Field(
        300.0,
        gt=0,
        le=86400,
        description="A new `{camera_id}_{UTC start}.mp4` file every "
        "this many seconds, so retention can drop the oldest footage.",
    )


class EvidenceLimits(_Strict):
    """Disk budget of snapshots and annotated video together. Defaults fit a 32 GB card: the OS and runtime take
    ~10 GB, the outbox at its 1,000,000-message bound up to ~2 GB; evidence gets 4 GB and stops while less than
    2 GB is free, so counts are never starved of space by pictures."""

    max_total_mb: float = Field(
        4096,
        gt=0,
        description="Quota of snapshots + annotated video; the oldest files "
        "(also those of earlier runs) are deleted first.",
    )
    min_free_mb: float = Field(
        2048,
        ge=0,
        description="Pause evidence while the filesystem of an evidence "
        "directory has less free space than this (resumes 10 % above it).",
    )
    check_interval_s: float = Field(5.0, gt=0, le=3600, description="How often free space is read (statvfs).")


class AgentConfig(BaseSettings):
    """The whole agent: `starfish agent run --config agent.yaml`."""

    model_config = SettingsConfigDict(
        extra="forbid", env_prefix="STARFISH_", env_nested_delimiter="__", case_sensitive=False
    )

    device_id: str = Field(description="This device's id: topic level and MQTT client id.")
    cameras: list[CameraConfig] = Field(min_length=1, description="Video sources (ids must be unique).")
    detector: DetectorConfig = Field(description="Model bundle and back end.")
    tracker: TrackerConfig = Field(default_factory=TrackerConfig, description="Tracking and unique counting.")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="Broker connection and publishing.")
    outbox_path: Path = Field(
        Path("/var/lib/starfish/outbox.sqlite3"),
        description="SQLite store-and-forward outbox: counts survive broker outages and power cuts.",
    )
    state_dir: Path = Field(
        Path("/var/lib/starfish/state"),
        description="Device state no bundle can write (created 0700): the anti-rollback floor per model and the "
        "key that authenticates cached TensorRT engines. Must not lie inside the bundle.",
    )
    outbox_max_messages: int = Field(
        1_000_000, ge=100, description="Outbox size bound; beyond it the oldest messages are dropped (counted)."
    )
    outbox_max_age_s: float = Field(
        7 * 86400, gt=0, description="Messages older than this are dropped from the outbox (counted)."
    )
    outbox_synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL",
        description=(
            "SQLite durability of the outbox. FULL fsyncs every commit and survives a power cut; NORMAL is several "
            "times faster but a power cut may roll back published seq numbers, which subscribers would then "
            "mistake for duplicates. Both survive a killed process."
        ),
    )
    updates: UpdateConfig | None = Field(
        None,
        description="Over-the-air model updates (signed announcements on `…/model/set` and the fleet topic). When "
        "set, the agent runs `updates.models_dir/current`, seeded from `detector.bundle` on first start.",
    )
    snapshots: SnapshotConfig = Field(default_factory=SnapshotConfig, description="JPEG evidence for people.")
    video_output: VideoOutputConfig = Field(default_factory=VideoOutputConfig, description="Annotated video.")
    evidence: EvidenceLimits = Field(
        default_factory=EvidenceLimits, description="Disk quota and free-space guard of snapshots and annotated video."
    )
    console_interval_s: float = Field(1.0, gt=0, description="How often the live console line refreshes.")
    stop_when_sources_end: bool = Field(
        True, description="Exit by itself once every camera is a finished (non-looping) video file."
    )

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, value: str) -> str:
        return check_level("device_id", value)  # a topic level and part of the MQTT client id

    @model_validator(mode="after")
    def _unique_cameras(self) -> AgentConfig:
        ids = [camera.id for camera in self.cameras]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"camera ids must be unique, repeated: {duplicates}")
        # Home Assistant ids cannot hold '.', which becomes '_': `cam.1` and `cam_1` would be one entity.
        ha = [ha_id(i) for i in ids]
        clashing = sorted({i for i, h in zip(ids, ha, strict=True) if ha.count(h) > 1})
        if clashing:
            raise ValueError(f"camera ids must differ in more than '.' versus '_' (Home Assistant ids): {clashing}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment before init (= the YAML file's content) so that `STARFISH_…` overrides the file.
        return env_settings, init_settings


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem, each naming the field by its dotted path (``cameras.0.source: ...``)."""
    lines = []
    for err in exc.errors():
        location = ".".join(str(part) for part in err["loc"]) or "<root>"
        lines.append(f"{location}: {err['msg']}")
    return "; ".join(lines)


def load_config_data(data: dict[str, Any]) -> AgentConfig:
    """Validate a mapping (plus environment overrides); raise `ConfigError` naming every bad field."""
    if not isinstance(data, dict):
        raise ConfigError(f"the configuration must be a mapping of keys to values, got {type(data).__name__}")
    try:
        return AgentConfig(**data)
    except ValidationError as exc:
        raise ConfigError(f"invalid agent configuration: {format_validation_error(exc)}") from exc
    except SettingsError as exc:  # a STARFISH_… variable that is not valid JSON for a list/mapping field
        cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
        raise ConfigError(f"invalid environment override: {exc}{cause}") from exc
    except TypeError as exc:  # e.g. a non-string key in YAML
        raise ConfigError(f"invalid agent configuration: {exc}") from exc


def preflight(cfg: AgentConfig) -> None:
    """What the configuration needs from this machine at start-up; raise `ConfigError` naming the field.

    Run by `agent config --check` and before `agent run` builds anything, so a setting that would crash later
    (an unset password variable, an outbox that cannot be created) is one clear line and exit code 2 instead.
    """
    problems = []
    env = cfg.mqtt.password_env
    if env is not None and env not in os.environ:
        problems.append(f"mqtt.password_env: environment variable {env!r} is not set")
    problem = _outbox_path_problem(cfg.outbox_path)
    if problem:
        problems.append(f"outbox_path: {problem}")
    if cfg.updates is not None:
        from edge_agent.bundle import BundleError, load_public_key

        for index, key in enumerate(cfg.updates.release_keys):
            try:
                load_public_key(key)
            except (BundleError, OSError) as exc:
                problems.append(f"updates.release_keys.{index}: {exc}")
        if Path(cfg.updates.models_dir).exists() and not Path(cfg.updates.models_dir).is_dir():
            problems.append(f"updates.models_dir: {cfg.updates.models_dir} exists and is not a directory")
    if problems:
        raise ConfigError("; ".join(problems))


def _outbox_path_problem(path: Path) -> str | None:
    """Why the outbox database (and its -wal, -shm and .lock files beside it) cannot be created here, if so."""
    if path.exists():
        if path.is_dir():
            return f"{path} is a directory"
        if not os.access(path, os.R_OK | os.W_OK):
            return f"{path} is not readable and writable by this user"
    parent = path.parent
    while not parent.exists():  # the outbox creates missing directories: the first existing one must allow it
        if parent.parent == parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create files in {parent} (no write permission for this user)"
    return None


def load_config(path: Path) -> AgentConfig:
    """Read YAML from ``path`` and validate it; relative paths in it stay relative to the working directory."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not UTF-8 text: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration file {path} is not valid YAML: {exc}") from exc
    return load_config_data({} if data is None else data)


EXAMPLE_YAML = """\
# starfish edge agent configuration. Every key is optional unless marked REQUIRED.
# Environment variables override this file: STARFISH_<KEY>, nested with "__", e.g.
#   STARFISH_MQTT__HOST=broker.local  STARFISH_DEVICE_ID=reef-03  STARFISH_DETECTOR__VARIANT=int8
device_id: reef-01                 # REQUIRED: MQTT topic level and client id

cameras:                           # REQUIRED: one or more sources, each on its own capture thread
  - id: cam0
    source: 0                      # V4L2 index; or "/dev/video0"
    # Jetson CSI camera (GStreamer pipeline, must end in appsink):
    # source: "nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 !
    #          nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=true"
    # Network stream:  source: "rtsp://user:pass@192.168.1.20:554/stream1"  (also http://..., udp://@:5000)
    # Video file:      source: "videos/video_0.mp4"   with   loop: true
    read_mode: latest              # latest: drop stale frames (live) | every_frame: process all (recorded clips)
    target_fps: null               # cap processing rate per camera, e.g. 5
    reconnect_initial_s: 0.5       # backoff after a lost stream doubles from here ...
    reconnect_max_s: 30            # ... up to this cap; the agent never exits because a camera failed

detector:                          # paths are relative to the working directory (here: the repository root)
  bundle: models/demo/bundle       # REQUIRED: signed model bundle (directory or .tar)
  trusted_keys: [models/demo/demo_key.pub]   # REQUIRED: ed25519 public keys (PEM) accepted for signatures
  variant: null                    # fp32 | int8 | int8_cpu; null = bundle default (int8_cpu on a CPU)
  backends: [tensorrt, onnxruntime]  # first available wins (TensorRT needs a Jetson/CUDA host)
  score_threshold: null            # null = the variant's counting threshold from the bundle (else its best-F2 one)
  threads: null                    # onnxruntime intra-op threads
  allow_rollback: false            # true: accept a bundle older than the newest this device ran (logged)

tracker:
  iou_threshold: 0.2
  max_age_s: 1.5                   # seconds of capture time unseen before a track ends (`end` event)
  min_hits: null                   # detections before a track counts as a starfish (null = the bundle's, else 3)
  low_score_threshold: 0.1         # ByteTrack second pass: weaker boxes keep confirmed tracks alive (null: off)

mqtt:
  host: 127.0.0.1
  port: 1883
  protocol: "5"                    # "5" or "3.1.1"
  username: null
  password_env: null               # name of an env var holding the password (keeps secrets out of files)
  tls: null                        # e.g. {ca_file: /etc/starfish/ca.pem, cert_file: ..., key_file: ...}
  topic_prefix: starfish
  counts:
    mode: per_frame                # per_frame | aggregate (one message per camera every interval_s)
    interval_s: 5
    include_detections: true
  stats_interval_s: 10
  discovery: {enabled: true, prefix: homeassistant}

outbox_path: state/outbox.sqlite3  # counts are durable here before they are published (directory created);
                                   # a system service uses /var/lib/starfish/outbox.sqlite3
state_dir: state/device            # anti-rollback floor + engine-cache key; no bundle can write here
                                   # (a system service: /var/lib/starfish/state)
outbox_max_messages: 1000000       # drop-oldest beyond this (counted in stats)
outbox_max_age_s: 604800           # drop messages older than a week (counted)
outbox_synchronous: FULL           # FULL survives power cuts; NORMAL is faster but only survives a killed process

updates: null                      # over-the-air model updates; off unless set, e.g.:
# updates:
#   models_dir: state/models         # versions/<v>/, downloads/, and the `current` link the agent runs
#   release_keys: [keys/release.pub] # ed25519 keys whose announcements are accepted
#   probation_frames: 100            # the new model must count this many frames ...
#   probation_s: 60                  # ... for at least this long before it is committed
#   probation_max_errors: 3          # more detection errors in probation: automatic rollback
#   probation_max_fps_drop: 0.5      # fps below half the previous model's: automatic rollback

snapshots:
  enabled: false
  directory: snapshots
  min_interval_s: 10               # per camera
  min_count: 1
video_output:
  enabled: false
  directory: annotated
  fps: 10
  segment_s: 300                   # one file per camera per 5 minutes
evidence:                          # snapshots + video together; defaults fit a 32 GB card
  max_total_mb: 4096               # oldest files deleted first
  min_free_mb: 2048                # evidence pauses below this free space (the outbox needs it)
console_interval_s: 1.0
stop_when_sources_end: true        # exit after non-looping video files end
"""

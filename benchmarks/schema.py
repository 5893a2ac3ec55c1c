"""The benchmark result file: one pydantic schema, written as JSON and read back by `starfish bench compare`.

Every number that a comparison or a chart uses lives here with its unit in the field name, so that a result file
from another machine or an older run can be checked field by field (``extra="forbid"`` makes a renamed field an
error, not a silent zero).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
Status = Literal["ok", "skipped", "failed"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LatencyStats(_Strict):
    """Per-frame latency of one back end: medians over the repeats, with the spread across repeats."""

    p50_ms: float = Field(description="Median over repeats of each repeat's median latency.")
    p90_ms: float = Field(description="Median over repeats of each repeat's 90th percentile.")
    p99_ms: float = Field(description="Median over repeats of each repeat's 99th percentile.")
    mean_ms: float = Field(description="Median over repeats of each repeat's mean latency.")
    p50_min_ms: float = Field(description="Lowest repeat median (spread).")
    p50_max_ms: float = Field(description="Highest repeat median (spread).")
    samples: int = Field(description="Timed frames per repeat (warm-up excluded).")
    repeats: int = Field(description="How many timed repeats the medians are taken over.")


class Throughput(_Strict):
    """Frames per second at a given batch size, from the wall time of whole timed loops."""

    batch: int = Field(description="Frames per inference call.")
    fps: float = Field(description="Median over repeats of frames / loop wall time.")
    fps_min: float = Field(description="Lowest repeat (spread).")
    fps_max: float = Field(description="Highest repeat (spread).")


class Accuracy(_Strict):
    """Accuracy of one back end on the `--data` frames, so that speed and accuracy sit side by side."""

    frames: int = Field(description="Frames evaluated.")
    score_threshold: float = Field(description="Threshold F2 is evaluated at (the bundle manifest's).")
    f2: float = Field(description="Competition F2 (IoU 0.3..0.8) at score_threshold.")
    map_50: float = Field(description="COCO mAP at IoU 0.5.")
    map: float = Field(description="COCO mAP at IoU 0.5:0.95.")
    best_f2: float = Field(description="Best F2 over thresholds on these frames.")
    best_threshold: float = Field(description="Threshold giving best_f2.")


class BackendResult(_Strict):
    """One back end's row: measured numbers when it ran, the reason when it was skipped or failed."""

    backend: str = Field(description="Back-end name, e.g. ort-cpu.")
    status: Status = Field(description="ok, skipped (not available here) or failed (available but broke).")
    reason: str | None = Field(default=None, description="Why it was skipped or failed.")
    device: str = Field(description="cpu or cuda.")
    precision: str = Field(description="fp32, fp16 or int8.")
    variant: str | None = Field(default=None, description="Bundle variant the back end ran (fp32, int8).")
    model_file: str | None = Field(default=None, description="Model file that was loaded.")
    model_size_bytes: int | None = Field(default=None, description="Size of model_file on disk.")
    load_s: float | None = Field(default=None, description="Load / engine build time incl. first warm-up call.")
    latency: LatencyStats | None = None
    throughput: Throughput | None = Field(default=None, description="Batch-1 throughput.")
    batch_throughput: Throughput | None = Field(default=None, description="Throughput at --batch when > 1.")
    peak_rss_mb: float | None = Field(default=None, description="Peak resident memory of the back end's process.")
    base_rss_mb: float | None = Field(
        default=None, description="Resident memory of that process before the model was loaded (frames included)."
    )
    peak_gpu_mb: float | None = Field(default=None, description="Peak GPU memory of the back end's process.")
    peak_gpu_source: str | None = Field(default=None, description="Where peak_gpu_mb comes from (nvml, torch).")
    threads: dict[str, int | str] = Field(default_factory=dict, description="Thread settings actually in force.")
    accuracy: Accuracy | None = None
    speedup_vs_baseline: float | None = Field(default=None, description="Baseline p50 latency / this p50 latency.")
    achieved_gflops: float | None = Field(default=None, description="2 x model MACs / p50 latency.")
    peak_fraction: float | None = Field(default=None, description="achieved_gflops / machine peak of that precision.")
    peak_key: str | None = Field(default=None, description="Which machine peak the fraction is taken against.")
    details: dict[str, object] = Field(default_factory=dict, description="Back-end specific facts (providers...).")


class MachinePeak(_Strict):
    """The machine's own arithmetic peak, measured by large matrix products."""

    values_gflops: dict[str, float] = Field(
        default_factory=dict, description="cpu_fp32, cpu_int8 (GOPS), gpu_fp32, gpu_fp16, gpu_int8 (GOPS)."
    )
    method: dict[str, str] = Field(default_factory=dict, description="How each value was measured.")
    unavailable: dict[str, str] = Field(default_factory=dict, description="Peaks not measured, with the reason.")


class ModelInfo(_Strict):
    name: str
    version: int | None = None
    bundle_path: str
    input_shape: list[int] | None = None
    score_threshold: float | None = None
    variants: dict[str, dict[str, object]] = Field(default_factory=dict)
    macs: int | None = Field(default=None, description="Multiply-accumulates per frame (fp32 graph, as run).")
    macs_method: str | None = None
    checkpoint: str | None = None


class Settings(_Strict):
    backends: list[str]
    baseline: str | None
    warmup: int = Field(description="Untimed calls before timing (at least).")
    warmup_s: float = Field(description="Untimed warm-up seconds (at least).")
    iterations: int
    repeats: int
    threads: int
    batch: int
    frame_source: str = Field(description="Where timing frames came from (dataset dir or clip).")
    pool_frames: int = Field(description="Distinct frames rotated through during timing.")
    accuracy_frames: int = Field(description="Frames evaluated for accuracy (0: no --data).")
    isolation: str = Field(description="How back ends were kept apart (one subprocess each).")


class BenchReport(_Strict):
    """A whole `starfish bench` run."""

    schema_version: int = SCHEMA_VERSION
    kind: Literal["starfish-bench"] = "starfish-bench"
    created_at: str = Field(description="UTC ISO 8601.")
    duration_s: float
    machine: dict[str, object] = Field(description="Machine fingerprint.")
    peak: MachinePeak
    model: ModelInfo
    settings: Settings
    results: list[BackendResult]

    def result(self, backend: str) -> BackendResult | None:
        return next((r for r in self.results if r.backend == backend), None)

"""Benchmark one back end in a process of its own: ``python -m benchmarks.worker SPEC.json RESULT.json``.

One process per back end keeps each back end's peak memory its own (torch alone adds hundreds of MB that would
otherwise be charged to onnxruntime), fixes thread counts before any library starts its pools, and turns a native
crash (a TensorRT abort, a CUDA error) into a ``failed`` row instead of the end of the run.

Progress goes to stdout as JSON lines (``{"event": "phase"|"step", ...}``) for the parent's progress bar; logs go to
stderr; the result is one `BackendResult` JSON file.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from benchmarks.backends import BACKENDS, BackendSkipped, open_detector
from benchmarks.memory import GpuMemorySampler, current_rss_mb, peak_rss_mb
from benchmarks.schema import Accuracy, BackendResult
from benchmarks.timing import latency_stats, throughput, time_repeats

logger = logging.getLogger("benchmarks.worker")


class WorkerSpec(BaseModel):
    """What the parent asks one worker to measure."""

    model_config = ConfigDict(extra="forbid")

    backend: str = Field(description="Back-end name (benchmarks.backends.BACKENDS).")
    bundle: str = Field(description="Bundle directory or .tar.")
    trusted_keys: list[str] = Field(description="Public keys the bundle must be signed by.")
    checkpoint: str | None = Field(None, description="PyTorch checkpoint for torch-* back ends.")
    data: str | None = Field(None, description="Reef dataset directory (timing frames and accuracy).")
    clip: str | None = Field(None, description="Video clip for timing frames.")
    video_ids: list[int] | None = Field(None, description="Only these videos of `data` (e.g. the validation one).")
    pool_frames: int = Field(32, ge=1, description="Distinct frames rotated through while timing.")
    warmup: int = Field(ge=0)
    warmup_s: float = Field(0.0, ge=0, description="Minimum warm-up time in seconds (on top of `warmup` calls).")
    iterations: int = Field(ge=1)
    repeats: int = Field(ge=1)
    threads: int = Field(ge=1)
    batch: int = Field(1, ge=1)
    accuracy_frames: int = Field(0, ge=0, description="Frames for accuracy; 0 with data: all frames.")
    engine_cache_dir: str | None = None


def emit(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def run(spec: WorkerSpec) -> BackendResult:
    from benchmarks.frames import dataset_frames, load_pool
    from edge_agent.bundle import load_bundle

    backend = BACKENDS[spec.backend]
    result = BackendResult(
        backend=backend.name,
        status="ok",
        device=backend.device,
        precision=backend.precision,
        variant=None,
    )
    emit("phase", phase="frames", total=0)
    pool, _ = load_pool(
        Path(spec.data) if spec.data else None, Path(spec.clip) if spec.clip else None, spec.pool_frames, spec.video_ids
    )
    bundle = load_bundle(spec.bundle, [Path(k) for k in spec.trusted_keys])
    result.base_rss_mb = round(current_rss_mb(), 1)

    gpu = GpuMemorySampler().start() if backend.device == "cuda" else None
    emit("phase", phase="load", total=0)
    start = time.perf_counter()
    detector = open_detector(
        backend,
        bundle,
        Path(spec.checkpoint) if spec.checkpoint else None,
        spec.threads,
        Path(spec.engine_cache_dir) if spec.engine_cache_dir else None,
    )
    # The first call on a real frame finishes lazy initialisation (arena allocation, kernel choice, TensorRT EP
    # engine build); it belongs to the load cost, and is excluded from the timed loops below.
    detector.detect(pool[0])
    result.load_s = round(time.perf_counter() - start, 3)
    if hasattr(detector, "count_macs"):  # after load_s: counting is not part of loading
        from edge_agent import preprocess

        tensor, _ = preprocess.letterbox(pool[0], detector.input_width, detector.input_height)
        result.details["macs"] = detector.count_macs(tensor)
    result.variant = None if backend.family == "torch" else getattr(detector, "variant", backend.variant)
    result.model_file = str(detector.model_path)
    on_disk = Path(detector.model_path)  # a checkpoint, or a bundle file; inside a .tar: the manifest's size
    result.model_size_bytes = on_disk.stat().st_size if on_disk.is_file() else detector.model_size

    emit("phase", phase="timing", total=spec.warmup + spec.iterations * spec.repeats)
    repeats = time_repeats(
        detector.detect,
        pool,
        warmup=spec.warmup,
        iterations=spec.iterations,
        repeats=spec.repeats,
        min_warmup_s=spec.warmup_s,
        on_step=lambda: emit("step"),
    )
    result.latency = latency_stats(repeats, spec.iterations)
    result.throughput = throughput(repeats, batch=1)

    if spec.batch > 1:
        if backend.supports_batch:
            result.batch_throughput = _batch_throughput(detector, pool, spec)
        else:
            result.details["batch"] = f"{backend.name} runs a fixed batch-1 graph; --batch {spec.batch} not measured"

    if spec.data:
        frames = dataset_frames(Path(spec.data), spec.accuracy_frames, spec.video_ids)
        emit("phase", phase="accuracy", total=len(frames))
        variant = getattr(detector, "variant", None)
        threshold = (
            bundle.manifest.threshold_for(variant)
            if variant in bundle.manifest.variants
            else bundle.manifest.score_threshold
        )
        result.accuracy = _accuracy(detector, frames, threshold)

    if gpu is not None:
        peak = gpu.stop()
        own = getattr(detector, "gpu_peak_mb", lambda: None)()
        if own is not None:  # torch's allocator knows its own peak better than a sampler
            result.peak_gpu_mb, result.peak_gpu_source = round(own, 1), "torch-max-reserved"
        elif peak is not None:
            result.peak_gpu_mb, result.peak_gpu_source = round(peak[0], 1), peak[1]
        else:
            result.details["peak_gpu"] = gpu.unavailable
    result.peak_rss_mb = round(peak_rss_mb(), 1)
    threads = getattr(detector, "thread_info", None)
    result.threads = threads() if threads else {}
    if backend.family == "onnxruntime":
        result.threads.update(onnxruntime_intra_op=spec.threads, onnxruntime_inter_op=1)
    result.threads.update(
        requested=spec.threads,
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "unset"),
        OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "unset"),
    )
    result.details.update(
        {
            k: v
            for k, v in detector.describe().items()
            if k in ("providers", "tensorrt_version", "device", "checkpoint", "checkpoint_matches_bundle")
        }
    )
    if getattr(detector, "precision", None):
        result.details["engine_precision"] = detector.precision
    detector.close()
    return result


def _batch_throughput(detector: object, pool: list[np.ndarray], spec: WorkerSpec) -> object:
    from edge_agent import preprocess

    tensors = [preprocess.letterbox(f, detector.input_width, detector.input_height)[0] for f in pool]
    batches = [
        np.concatenate([tensors[(i + j) % len(tensors)] for j in range(spec.batch)])
        for i in range(0, max(len(tensors), spec.batch), spec.batch)
    ]
    emit("phase", phase=f"batch {spec.batch}", total=spec.warmup + spec.iterations * spec.repeats)
    repeats = time_repeats(
        detector.infer_batch,
        batches,
        warmup=spec.warmup,
        iterations=spec.iterations,
        repeats=spec.repeats,
        min_warmup_s=spec.warmup_s,
        frames_per_call=spec.batch,
        on_step=lambda: emit("step"),
    )
    return throughput(repeats, batch=spec.batch)


def _accuracy(detector: object, frames: list, score_threshold: float) -> Accuracy:
    from edge_agent.dataset import load_image
    from edge_agent.metrics import best_f2_threshold, coco_map, f2_score

    predictions, truths = [], []
    for frame in frames:
        found = detector.detect(load_image(frame.image_path))
        predictions.append((found.boxes, found.scores))
        truths.append(frame.boxes)
        emit("step")
    at_threshold = f2_score(predictions, truths, score_threshold)
    best = best_f2_threshold(predictions, truths)
    maps = coco_map(predictions, truths)
    return Accuracy(
        frames=len(frames),
        score_threshold=score_threshold,
        f2=at_threshold.f2,
        map_50=maps["map_50"],
        map=maps["map"],
        best_f2=best.f2,
        best_threshold=best.threshold,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        sys.stderr.write("usage: python -m benchmarks.worker SPEC.json RESULT.json\n")
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    spec = WorkerSpec.model_validate_json(Path(argv[0]).read_text())
    out = Path(argv[1])
    backend = BACKENDS[spec.backend]
    try:
        result = run(spec)
    except BackendSkipped as exc:
        result = BackendResult(
            backend=backend.name, status="skipped", reason=str(exc), device=backend.device, precision=backend.precision
        )
    except Exception as exc:  # noqa: BLE001 - any failure of one back end is reported, never fatal to the run
        traceback.print_exc()
        result = BackendResult(
            backend=backend.name,
            status="failed",
            reason=f"{type(exc).__name__}: {exc}",
            device=backend.device,
            precision=backend.precision,
        )
    out.write_text(result.model_dump_json(indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

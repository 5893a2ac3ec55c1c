"""Run a whole benchmark: fingerprint, machine peak, model MACs, then one worker process per back end.

The parent never loads a model itself (beyond counting MACs on the fp32 graph), so a back end's numbers come only
from its own process. Speed-ups are taken against a baseline back end measured in the same run, never against
numbers from another run or machine.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.backends import BACKENDS, precheck
from benchmarks.fingerprint import machine_fingerprint
from benchmarks.peak import thread_env
from benchmarks.schema import BackendResult, BenchReport, MachinePeak, ModelInfo, Settings
from benchmarks.worker import WorkerSpec

logger = logging.getLogger(__name__)

MIN_BACKEND_S = 15.0  # below this much budget a back end cannot even load; skip it rather than kill it midway
ISOLATION = "one subprocess per back end; peak RSS = that process's own high-water mark (VmHWM)"


@dataclass
class BenchOptions:
    """Everything a run needs; the CLI fills it from its options."""

    bundle: Path
    backends: list[str]
    trusted_keys: list[Path]
    checkpoint: Path | None = None
    data: Path | None = None
    clip: Path | None = None
    video_ids: list[int] | None = None
    baseline: str | None = None
    warmup: int = 5
    warmup_s: float = 3.0
    iterations: int = 50
    repeats: int = 3
    threads: int = 1
    batch: int = 1
    pool_frames: int = 32
    accuracy_frames: int = 100
    measure_peak: bool = True
    timeout_s: float = 1800.0
    budget_s: float | None = None  # whole run: back ends left when it runs out are skipped, not started
    engine_cache_dir: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    # A second bundle (e.g. the unpruned model) run on the same frames in the same run: its rows are named
    # `<back end>@<reference_label>`, so a compression step's own speed-up is a ratio of two medians of one run.
    reference: Path | None = None
    reference_label: str = "reference"
    reference_backends: list[str] = field(default_factory=lambda: ["ort-cpu", "ort-cpu-int8-u8"])


class Progress:
    """Callbacks the CLI's progress display implements; the defaults do nothing (library and test use)."""

    def backend_started(self, backend: str) -> None: ...

    def phase(self, backend: str, phase: str, total: int) -> None: ...

    def step(self, backend: str) -> None: ...

    def backend_done(self, result: BackendResult) -> None: ...


def run_benchmark(opts: BenchOptions, progress: Progress | None = None) -> BenchReport:
    """Benchmark every requested back end; unavailable ones become ``skipped`` rows, broken ones ``failed``."""
    from edge_agent.bundle import load_bundle

    progress = progress or Progress()
    rows = opts.backends + (
        [reference_name(n, opts.reference_label) for n in opts.reference_backends] if opts.reference else []
    )
    if opts.baseline is not None and opts.baseline not in rows:
        raise ValueError(f"baseline {opts.baseline!r} is not among the benchmarked back ends {opts.backends}")
    started = time.perf_counter()
    created_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    bundle = load_bundle(opts.bundle, opts.trusted_keys)
    manifest = bundle.manifest
    variants = set(manifest.variants)
    reasons = {name: precheck(BACKENDS[name], variants, opts.checkpoint) for name in opts.backends}
    runnable = [name for name in opts.backends if reasons[name] is None]
    wants_gpu = any(BACKENDS[name].device == "cuda" for name in runnable)

    machine = machine_fingerprint()
    peak = (
        measure_peak(opts.threads, gpu=wants_gpu)
        if opts.measure_peak
        else MachinePeak(unavailable={"all": "not measured (--no-peak)"})
    )
    model = ModelInfo(
        name=manifest.name,
        version=manifest.version,
        bundle_path=str(opts.bundle),
        input_shape=list(manifest.input.shape),
        score_threshold=manifest.score_threshold,
        variants={k: v.model_dump(mode="json") for k, v in manifest.variants.items()},
        checkpoint=str(opts.checkpoint) if opts.checkpoint else None,
    )
    _count_model_macs(model, bundle, opts)

    results: list[BackendResult] = []
    with tempfile.TemporaryDirectory(prefix="starfish-bench-") as tmp:
        for name in opts.backends:
            progress.backend_started(name)
            result = _run_or_skip(name, reasons[name], opts, Path(tmp), progress, started)
            results.append(result)
            progress.backend_done(result)

        if opts.reference is not None:
            results += _run_reference(opts, Path(tmp), progress, started)

    baseline = _derive(results, opts.baseline, model.macs, peak)
    frame_source = f"clip:{opts.clip}" if opts.clip else f"dataset:{opts.data}"
    if opts.video_ids and not opts.clip:
        frame_source += f" (videos {','.join(map(str, opts.video_ids))})"
    settings = Settings(
        backends=opts.backends,
        baseline=baseline,
        warmup=opts.warmup,
        warmup_s=opts.warmup_s,
        iterations=opts.iterations,
        repeats=opts.repeats,
        threads=opts.threads,
        batch=opts.batch,
        frame_source=frame_source,
        pool_frames=opts.pool_frames,
        accuracy_frames=opts.accuracy_frames if opts.data else 0,
        isolation=ISOLATION,
    )
    return BenchReport(
        created_at=created_at,
        duration_s=round(time.perf_counter() - started, 1),
        machine=machine,
        peak=peak,
        model=model,
        settings=settings,
        results=results,
    )


def measure_peak(threads: int, gpu: bool) -> MachinePeak:
    """Run `benchmarks.peak` in a fresh process with the benchmark's thread count."""
    cmd = [sys.executable, "-m", "benchmarks.peak", "--threads", str(threads)] + ([] if gpu else ["--no-gpu"])
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=thread_env(threads), timeout=300, check=True)
        return MachinePeak.model_validate_json(done.stdout)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, ValueError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        logger.warning("machine peak measurement failed: %s", detail.strip().splitlines()[-1:] or exc)
        return MachinePeak(unavailable={"all": f"peak measurement failed: {exc}"})


def _count_model_macs(model: ModelInfo, bundle: object, opts: BenchOptions) -> None:
    """MACs of the fp32 graph on one real frame (the second stage's size depends on the frame)."""
    from benchmarks.frames import load_pool
    from benchmarks.macs import count_macs
    from edge_agent import preprocess

    variant = "fp32" if "fp32" in bundle.manifest.variants else bundle.manifest.default_variant
    try:
        frame = load_pool(opts.data, opts.clip, 1, opts.video_ids)[0][0]
        tensor, _ = preprocess.letterbox(frame, bundle.manifest.input.width, bundle.manifest.input.height)
        count = count_macs(bundle.variant_path(variant), {preprocess.INPUT_NAME: tensor})
    except ImportError as exc:
        logger.warning("MACs not counted: %s (needs onnx and onnxruntime)", exc)
        model.macs_method = f"not counted: {exc}"
        return
    model.macs = count.total
    model.macs_method = (
        f"{variant} ONNX graph run once on a real frame: Conv/Gemm/MatMul MACs from actual shapes "
        f"({', '.join(f'{k} {v / 1e9:.2f}G' for k, v in sorted(count.by_op.items()))})"
    )


def reference_name(backend: str, label: str) -> str:
    return f"{backend}@{label}"


def _run_reference(opts: BenchOptions, tmp: Path, progress: Progress, started: float) -> list[BackendResult]:
    """The reference bundle's rows, each with the reference graph's own MACs (it is not the benchmarked model)."""
    from edge_agent.bundle import load_bundle

    assert opts.reference is not None
    reference = load_bundle(opts.reference, opts.trusted_keys)
    info = ModelInfo(name=reference.manifest.name, bundle_path=str(opts.reference))
    _count_model_macs(info, reference, opts)
    out = []
    for name in opts.reference_backends:
        spec, label = BACKENDS[name], reference_name(name, opts.reference_label)
        progress.backend_started(label)
        reason = precheck(spec, set(reference.manifest.variants), None)
        result = _run_or_skip(name, reason, opts, tmp, progress, started, bundle=opts.reference, label=label)
        if result.status != "skipped":
            result.backend = label
            if info.macs:
                result.details["macs"] = info.macs
            result.details["bundle"] = f"{reference.manifest.name} v{reference.manifest.version}"
        out.append(result)
        progress.backend_done(result)
    return out


def _run_or_skip(
    name: str,
    reason: str | None,
    opts: BenchOptions,
    tmp: Path,
    progress: Progress,
    started: float,
    bundle: Path | None = None,
    label: str | None = None,
) -> BackendResult:
    """A skipped row (``reason``, or the run budget spent), else the worker's result within what is left of it."""
    spec = BACKENDS[name]
    remaining = None if opts.budget_s is None else opts.budget_s - (time.perf_counter() - started)
    if reason is None and remaining is not None and remaining < MIN_BACKEND_S:
        reason = f"run budget of {opts.budget_s:.0f} s exhausted before this back end"
    if reason is not None:
        return BackendResult(
            backend=label or name, status="skipped", reason=reason, device=spec.device, precision=spec.precision
        )
    timeout = opts.timeout_s if remaining is None else min(opts.timeout_s, remaining)
    return _run_worker(name, opts, tmp, progress, timeout, bundle=bundle, label=label)


def _run_worker(
    name: str,
    opts: BenchOptions,
    tmp: Path,
    progress: Progress,
    timeout_s: float,
    bundle: Path | None = None,
    label: str | None = None,
) -> BackendResult:
    spec = BACKENDS[name]
    label = label or name
    worker_spec = WorkerSpec(
        backend=name,
        bundle=str(bundle or opts.bundle),
        trusted_keys=[str(k) for k in opts.trusted_keys],
        checkpoint=str(opts.checkpoint) if opts.checkpoint else None,
        data=str(opts.data) if opts.data else None,
        clip=str(opts.clip) if opts.clip else None,
        video_ids=opts.video_ids,
        pool_frames=opts.pool_frames,
        warmup=opts.warmup,
        warmup_s=opts.warmup_s,
        iterations=opts.iterations,
        repeats=opts.repeats,
        threads=opts.threads,
        batch=opts.batch,
        accuracy_frames=opts.accuracy_frames,
        engine_cache_dir=str(opts.engine_cache_dir) if opts.engine_cache_dir else None,
    )
    spec_path, out_path, log_path = tmp / f"{label}.spec.json", tmp / f"{label}.result.json", tmp / f"{label}.log"
    spec_path.write_text(worker_spec.model_dump_json())
    env = {**thread_env(opts.threads), **opts.extra_env}
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.worker", str(spec_path), str(out_path)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
        )
        timer = threading.Timer(timeout_s, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                _forward_event(label, line, progress)
            code = proc.wait()
        finally:
            timer.cancel()
    if out_path.is_file() and code == 0:
        return BackendResult.model_validate_json(out_path.read_text())
    tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-3:])
    why = f"killed after {timeout_s:.0f} s (timeout)" if code in (-9, 137) else f"worker exited with code {code}"
    logger.warning("%s: %s; log tail: %s", label, why, tail)
    return BackendResult(
        backend=label, status="failed", reason=f"{why}: {tail}"[:500], device=spec.device, precision=spec.precision
    )


def _forward_event(name: str, line: str, progress: Progress) -> None:
    try:
        event = json.loads(line)
    except ValueError:
        logger.debug("%s: %s", name, line.rstrip())  # a library printing to stdout
        return
    if event.get("event") == "step":
        progress.step(name)
    elif event.get("event") == "phase":
        progress.phase(name, str(event.get("phase")), int(event.get("total", 0)))


def _derive(results: list[BackendResult], baseline: str | None, macs: int | None, peak: MachinePeak) -> str | None:
    """Speed-up against the same-run baseline (default: the first back end that ran); achieved GFLOPS and the
    fraction of the machine's peak. Returns the baseline actually used."""
    ran = [r for r in results if r.status == "ok" and r.latency]
    base = next((r for r in ran if r.backend == baseline), None) if baseline else (ran[0] if ran else None)
    if baseline and base is None:
        logger.warning("baseline %s did not run; no speed-ups", baseline)
    for result in ran:
        if base is not None:
            result.speedup_vs_baseline = round(base.latency.p50_ms / result.latency.p50_ms, 3)
        own_macs = result.details.get("macs") or macs  # the torch source model counts its own (it may be unpruned)
        if own_macs:
            result.achieved_gflops = round(2 * own_macs / (result.latency.p50_ms / 1000) / 1e9, 2)
            key = f"{'gpu' if result.device == 'cuda' else 'cpu'}_{result.precision}"
            result.peak_key = key
            if key in peak.values_gflops and peak.values_gflops[key] > 0:
                result.peak_fraction = round(result.achieved_gflops / peak.values_gflops[key], 4)
    return base.backend if base is not None else baseline

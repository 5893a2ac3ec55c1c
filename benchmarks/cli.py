"""`starfish bench …`: benchmark back ends of a bundle, compare two results, profile the agent pipeline.

``starfish bench BUNDLE --backends …`` is short for ``starfish bench run BUNDLE --backends …``. Heavy libraries are
imported inside the commands, so ``starfish --help`` stays fast and torch-free.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

logger = logging.getLogger(__name__)

DEFAULT_BACKENDS = "all"
RESULTS_DIR = Path("benchmarks/results")


class _DefaultRunGroup(TyperGroup):
    """Treat ``bench BUNDLE …`` as ``bench run BUNDLE …`` when the first word is not a sub-command."""

    # `Any`, not click.Context: typer >= 0.2x vendors click, so `click` may not be installed at all.
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_DefaultRunGroup,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="Benchmark back ends: latency, throughput, memory, accuracy; compare results; profile.",
)


def _default_threads() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def _resolve_bundle(path: Path) -> Path:
    """Accept a model directory holding ``bundle/`` (``models/demo``) as well as the bundle itself."""
    if path.is_dir() and not (path / "manifest.json").is_file() and (path / "bundle" / "manifest.json").is_file():
        return path / "bundle"
    return path


def _fallback_frames() -> Path:
    """Without --data/--clip: a cached synthetic reef dataset (needs the generator in `train.synth`)."""
    import importlib.util

    from benchmarks.frames import synthetic_dataset

    if importlib.util.find_spec("train.synth") is None:
        raise typer.BadParameter(
            "timing needs real frames: give --data DIR (reef dataset) or --clip VIDEO", param_hint="--data"
        )
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "starfish"
    logger.warning("no --data or --clip: timing and accuracy use synthetic reef frames (%s)", cache)
    return synthetic_dataset(cache)


def _trusted_keys(bundle: Path, keys: list[Path] | None) -> list[Path]:
    if keys:
        return keys
    beside = sorted(bundle.resolve().parent.glob("*.pub"))
    if not beside:
        raise typer.BadParameter(
            f"no --key given and no *.pub beside {bundle}: name the bundle's public key", param_hint="--key"
        )
    logger.warning(
        "no --key given: trusting the public key(s) beside the bundle: %s", ", ".join(p.name for p in beside)
    )
    return beside


@app.command("run")
def run_command(
    bundle: Path = typer.Argument(..., help="Bundle directory or .tar (or a model dir holding bundle/).", exists=True),
    backends: str = typer.Option(
        DEFAULT_BACKENDS,
        "--backends",
        "-b",
        help="Comma-separated back ends, or 'all': torch-cpu, ort-cpu, ort-cpu-int8, "
        "ort-cpu-int8-u8, torch-cuda, ort-cuda, ort-tensorrt, tensorrt-fp16, "
        "tensorrt-int8.",
    ),
    key: list[Path] = typer.Option(
        None,
        "--key",
        "-k",
        help="Trusted public key (repeatable). Default: *.pub files beside the bundle.",
        exists=True,
        dir_okay=False,
    ),
    checkpoint: Path = typer.Option(
        None, "--checkpoint", help="PyTorch checkpoint for torch-cpu / torch-cuda.", exists=True, dir_okay=False
    ),
    data: Path = typer.Option(
        None,
        "--data",
        help="Reef dataset dir: timing frames, and F2 / mAP@0.5. Default "
        "(no --clip either): a cached synthetic reef dataset.",
        exists=True,
        file_okay=False,
    ),
    clip: Path = typer.Option(
        None, "--clip", help="Video clip for timing frames (no accuracy).", exists=True, dir_okay=False
    ),
    video_ids: str = typer.Option(
        None,
        "--video-ids",
        help="Comma-separated video ids of --data to use (e.g. the held-out validation video). Default: all.",
    ),
    baseline: str = typer.Option(
        None, "--baseline", help="Back end the speed-ups are relative to (same run). Default: the first one that ran."
    ),
    warmup: int = typer.Option(5, min=0, help="Untimed calls before timing (at least this many)."),
    warmup_s: float = typer.Option(3.0, min=0, help="Untimed warm-up seconds (at least; PyTorch on CPU needs a few)."),
    iterations: int = typer.Option(50, min=1, help="Timed frames per repeat."),
    repeats: int = typer.Option(3, min=1, help="Timed repeats; reported values are medians over them."),
    threads: int = typer.Option(None, min=1, help="CPU threads for every back end. Default: physical cores."),
    batch: int = typer.Option(1, min=1, help="Also measure throughput at this batch size where supported."),
    pool_frames: int = typer.Option(32, min=1, help="Distinct real frames rotated through while timing."),
    accuracy_frames: int = typer.Option(100, min=0, help="Frames evaluated with --data (0: all)."),
    output_dir: Path = typer.Option(
        None, "--output-dir", "-o", help="Where JSON, CSV, Markdown and PNG go. Default: benchmarks/results/<machine>/."
    ),
    name: str = typer.Option(None, help="File stem of the outputs. Default: model-version-machine-time."),
    peak: bool = typer.Option(True, help="Measure the machine's peak (matmul) for the '% of peak' column."),
    chart: bool = typer.Option(True, help="Write the PNG chart."),
    timeout: float = typer.Option(1800, min=1, help="Seconds one back end may take before it is killed."),
    budget: float = typer.Option(
        None,
        min=1,
        help="Seconds for the whole run: back ends that would start after "
        "it is spent are skipped (CI / GPU check time limits).",
    ),
    engine_cache: Path = typer.Option(None, help="TensorRT engine cache dir. Default: beside the bundle."),
    reference: Path = typer.Option(
        None,
        "--reference",
        help="A second bundle (e.g. the unpruned model) timed on the same frames in this run; its rows are "
        "named <back end>@<--reference-label>.",
    ),
    reference_label: str = typer.Option("reference", help="Suffix of the reference bundle's rows."),
    reference_backends: str = typer.Option(
        "ort-cpu,ort-cpu-int8-u8", help="Back ends run on the --reference bundle (comma-separated)."
    ),
) -> None:
    """Benchmark BUNDLE on each back end; unavailable back ends are listed as skipped with the reason."""

    from benchmarks.backends import parse_backends
    from benchmarks.fingerprint import machine_slug
    from benchmarks.report import markdown_table, results_table, write_chart, write_csv, write_json
    from benchmarks.runner import BenchOptions, run_benchmark

    try:
        names = parse_backends(backends)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--backends") from exc
    bundle = _resolve_bundle(bundle)
    try:
        videos = [int(v) for v in video_ids.split(",") if v.strip()] if video_ids else None
    except ValueError as exc:
        raise typer.BadParameter(f"video ids must be integers, got {video_ids!r}", param_hint="--video-ids") from exc
    if data is None and clip is None:
        data = _fallback_frames()
    from benchmarks.runner import reference_name

    ref_names: list[str] = []
    if reference is not None:
        try:
            ref_names = parse_backends(reference_backends)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--reference-backends") from exc
        if not reference_label.replace("-", "").replace("_", "").isalnum():
            raise typer.BadParameter(
                f"{reference_label!r}: use letters, digits, - and _", param_hint="--reference-label"
            )
        reference = _resolve_bundle(reference)
    known = names + [reference_name(n, reference_label) for n in ref_names]
    if baseline is not None and baseline not in known:
        raise typer.BadParameter(
            f"{baseline!r} is not among --backends or --reference rows {known}", param_hint="--baseline"
        )
    opts = BenchOptions(
        bundle=bundle,
        backends=names,
        trusted_keys=_trusted_keys(bundle, key),
        checkpoint=checkpoint,
        data=data,
        clip=clip,
        video_ids=videos,
        baseline=baseline,
        warmup=warmup,
        warmup_s=warmup_s,
        iterations=iterations,
        repeats=repeats,
        threads=threads or _default_threads(),
        batch=batch,
        pool_frames=pool_frames,
        accuracy_frames=accuracy_frames,
        measure_peak=peak,
        timeout_s=timeout,
        budget_s=budget,
        engine_cache_dir=engine_cache,
        reference=reference,
        reference_label=reference_label,
        reference_backends=ref_names,
    )
    console = _console()
    from benchmarks.frames import FrameSourceError
    from edge_agent.bundle import BundleError

    try:
        with _RichProgress(console, opts) as progress:
            report = run_benchmark(opts, progress)
    except BundleError as exc:  # refused before any back end ran: signature, hashes, schema
        raise typer.BadParameter(f"bundle {bundle} refused: {exc}", param_hint="BUNDLE") from exc
    except FrameSourceError as exc:
        raise typer.BadParameter(str(exc), param_hint="--data / --clip / --video-ids") from exc
    output_dir = output_dir or RESULTS_DIR / machine_slug(report.machine)
    output_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    stem = name or f"{report.model.name}-v{report.model.version}-{stamp}"
    written = [write_json(report, output_dir / f"{stem}.json"), write_csv(report, output_dir / f"{stem}.csv")]
    (output_dir / f"{stem}.md").write_text(markdown_table(report))
    written.append(output_dir / f"{stem}.md")
    if chart:
        png = write_chart(report, output_dir / f"{stem}.png")
        if png:
            written.append(png)
    console.print(results_table(report))
    console.print(f"model: {report.model.macs / 1e9:.2f} GMACs/frame" if report.model.macs else "model: MACs n/a")
    peaks = ", ".join(f"{k} {v:.0f}" for k, v in report.peak.values_gflops.items()) or "not measured"
    console.print(f"machine peak (GFLOPS / GOPS): {peaks}")
    console.print("wrote " + ", ".join(str(p) for p in written))
    if not any(r.status == "ok" for r in report.results):
        raise typer.Exit(code=1)


def _console() -> object:
    from rich.console import Console

    console = Console()
    # Redirected to a file or CI log, rich falls back to 80 columns and folds the table; keep rows on one line.
    return console if console.is_terminal else Console(width=max(console.width, 160))


class _RichProgress:
    """Rich progress bar fed by the workers' step events; one task per back end."""

    def __init__(self, console: object, opts: object) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> _RichProgress:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(*exc)

    def backend_started(self, backend: str) -> None:
        self._tasks[backend] = self._bar.add_task(f"{backend}: starting", total=None)

    def phase(self, backend: str, phase: str, total: int) -> None:
        self._bar.reset(self._tasks[backend], total=total or None, description=f"{backend}: {phase}")

    def step(self, backend: str) -> None:
        self._bar.advance(self._tasks[backend])

    def backend_done(self, result: object) -> None:
        task = self._tasks[result.backend]
        label = result.status if result.status == "ok" else f"{result.status} ({(result.reason or '')[:60]})"
        self._bar.update(task, description=f"{result.backend}: {label}", total=1, completed=1)


@app.command("compare")
def compare_command(
    base: Path = typer.Argument(..., exists=True, dir_okay=False, help="Reference result JSON."),
    new: Path = typer.Argument(..., exists=True, dir_okay=False, help="Result JSON to check."),
    tolerance: str = typer.Option("10%", help="Allowed relative worsening of speed / memory, e.g. 10% or 0.1."),
    accuracy_tolerance: float = typer.Option(0.02, min=0, help="Allowed absolute drop of F2 / mAP@0.5."),
    metrics: str = typer.Option(
        None,
        help="Comma-separated metrics to gate on. Default: p50_ms, p99_ms, fps, "
        "peak_rss_mb, peak_gpu_mb, f2, map_50 (also: load_s).",
    ),
) -> None:
    """List regressions of NEW against BASE; exit code 1 when there is one (CI / release gate)."""
    from pydantic import ValidationError
    from rich.table import Table

    from benchmarks.compare import ABSOLUTE_METRICS, DEFAULT_METRICS, METRICS, compare, parse_tolerance
    from benchmarks.report import read_json

    try:
        tol = parse_tolerance(tolerance)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--tolerance") from exc
    reports = []
    for path in (base, new):
        try:
            reports.append(read_json(path))
        except (ValidationError, ValueError) as exc:
            raise typer.BadParameter(f"{path} is not a starfish bench result: {exc}") from exc
    chosen = tuple(m.strip() for m in metrics.split(",")) if metrics else DEFAULT_METRICS
    try:
        result = compare(reports[0], reports[1], tol, accuracy_tolerance, chosen)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--metrics") from exc
    console = _console()
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    table = Table(title=f"{new.name} vs {base.name} (tolerance {tol:.0%}, accuracy ±{accuracy_tolerance})")
    for column in ("back end", "metric", "base", "new", "change", "better", "verdict"):
        table.add_column(column)
    styles = {"regression": "bold red", "improved": "green", "ok": "", "missing": "dim"}
    for row in result.rows:
        delta = row.delta  # signed like the values: fps or F2 going up prints +, whether that is good or bad
        change = "" if delta is None else (f"{delta:+.1%}" if row.metric not in ABSOLUTE_METRICS else f"{delta:+.3f}")
        better = METRICS[row.metric].better if row.metric in METRICS else ""
        style = styles[row.verdict]
        table.add_row(
            row.backend,
            row.metric,
            _num(row.base),
            _num(row.new),
            change,
            better,
            f"[{style}]{row.verdict}[/{style}]" if style else row.verdict + (f" {row.note}" if row.note else ""),
        )
    console.print(table)
    if result.regressions:
        console.print(
            f"[bold red]{len(result.regressions)} regression(s)[/bold red]: "
            + "; ".join(f"{r.backend} {r.metric}" + (f" ({r.note})" if r.note else "") for r in result.regressions)
        )
        raise typer.Exit(code=1)
    console.print("[green]no regression[/green]")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


@app.command("backends")
def backends_command(
    backends: str = typer.Option("all", "--backends", "-b", help="Comma-separated back ends to check, or 'all'."),
    checkpoint: Path = typer.Option(
        None, "--checkpoint", help="Checkpoint, to check the torch-* back ends.", exists=True, dir_okay=False
    ),
) -> None:
    """List the back ends asked for and whether each can run here (library-level check, no model needed)."""
    from rich.table import Table

    from benchmarks.backends import BACKENDS, parse_backends, precheck

    try:
        names = parse_backends(backends)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--backends") from exc
    # No bundle here: every variant a back end could need counts as present, so only libraries decide.
    every_variant = {spec.variant for spec in BACKENDS.values() if spec.variant}
    table = Table(title="benchmark back ends")
    for column in ("back end", "device", "precision", "what", "here"):
        table.add_column(column)
    for spec in (BACKENDS[name] for name in names):
        reason = precheck(spec, every_variant, checkpoint)
        table.add_row(spec.name, spec.device, spec.precision, spec.description, reason or "[green]available[/green]")
    _console().print(table)


@app.command("peak")
def peak_command(
    threads: int = typer.Option(None, min=1, help="Threads. Default: physical cores."),
) -> None:
    """Measure and print this machine's fingerprint and arithmetic peak (fp32, int8; GPU where present)."""
    import json

    from rich.console import Console

    from benchmarks.fingerprint import machine_fingerprint
    from benchmarks.runner import measure_peak

    console = Console()
    console.print_json(json.dumps(machine_fingerprint(), default=str))
    console.print_json(measure_peak(threads or _default_threads(), gpu=True).model_dump_json())


@app.command("pipeline")
def pipeline_command(
    config: Path = typer.Option(..., "--config", "-c", exists=True, dir_okay=False, help="The agent's agent.yaml."),
    clip: str = typer.Option(None, "--clip", help="Video to feed instead of the camera's configured source."),
    camera: str = typer.Option(None, "--camera", help="Camera id from the config. Default: the first enabled."),
    frames: int = typer.Option(200, min=1, help="Frames to time (the source may end sooner)."),
    warmup_frames: int = typer.Option(5, min=0, help="Frames run first and left out of the statistics."),
    publish: bool = typer.Option(
        True,
        help="Publish counts to the configured broker (as <device_id>-bench, with "
        "a temporary outbox), timing the publish stage.",
    ),
    output_dir: Path = typer.Option(
        None, "--output-dir", "-o", help="Where the JSON goes. Default: benchmarks/results/<machine>/."
    ),
    name: str = typer.Option(None, help="File stem. Default: pipeline-<backend>-<machine>-<time>."),
) -> None:
    """Time the agent's stages per frame (decode, preprocess, inference, postprocess + tracking, publish)."""
    from rich.progress import Progress
    from rich.table import Table

    from benchmarks.fingerprint import machine_slug
    from benchmarks.pipeline import profile_pipeline

    console = _console()
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("pipeline", total=frames)
        try:
            report = profile_pipeline(
                config,
                clip=clip,
                camera_id=camera,
                frames=frames,
                warmup_frames=warmup_frames,
                publish=publish,
                on_frame=lambda: bar.advance(task),
            )
        except ValueError as exc:  # ConfigError, a missing camera, an empty clip
            raise typer.BadParameter(str(exc)) from exc
    table = Table(
        title=f"agent pipeline: {report.backend.get('backend')} ({report.backend.get('variant')}) on "
        f"{report.machine.get('gpu_name') or report.machine.get('cpu_model')}, {report.frames} frames"
    )
    for column in ("stage", "mean ms", "p50 ms", "p90 ms", "p99 ms", "share"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for s in report.stages:
        table.add_row(
            s.stage, f"{s.mean_ms:.2f}", f"{s.p50_ms:.2f}", f"{s.p90_ms:.2f}", f"{s.p99_ms:.2f}", f"{s.share:.0%}"
        )
    console.print(table)
    console.print(
        f"end to end (sequential): {report.sequential_fps:.1f} fps; agent loop bound (decode on its own "
        f"thread): {report.agent_loop_fps:.1f} fps; load {report.load_s:.2f} s; "
        f"{report.detections_per_frame:.2f} detections/frame"
    )
    output_dir = output_dir or RESULTS_DIR / machine_slug(report.machine)
    output_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    stem = name or f"pipeline-{report.backend.get('backend')}-{stamp}"
    path = output_dir / f"{stem}.json"
    path.write_text(report.model_dump_json(indent=2) + "\n")
    console.print(f"wrote {path}")


def _comma_list(text: str | None, option: str, kind: type[int] | type[float]) -> list | None:
    """``"1,2,3"`` -> ``[1, 2, 3]`` of ``kind``; None or empty: None (the option's default)."""
    if not text:
        return None
    try:
        return [kind(v) for v in text.split(",")]
    except ValueError:
        words = "integers" if kind is int else "numbers"
        raise typer.BadParameter(f"{option} must be comma-separated {words}, got {text!r}") from None


@app.command("count-sweep")
def count_sweep_command(
    bundle: Path = typer.Argument(..., help="Bundle directory (or a model directory holding bundle/).", exists=True),
    data: Path = typer.Option(
        ..., "--data", help="Dataset root with videos/*.mp4 and synth.json (true counts).", exists=True, file_okay=False
    ),
    thresholds: str = typer.Option(
        None,
        help="Comma-separated detector score thresholds (default: the one the agent counts at for the variant: its "
        "calibrated counting threshold, else its best-F2 one).",
    ),
    min_hits: str = typer.Option(
        None, "--min-hits", help="Comma-separated tracker min_hits (default: the agent's for the variant)."
    ),
    videos: str = typer.Option(None, help="Comma-separated video ids (default: every video in synth.json)."),
    key: list[Path] = typer.Option(
        None, "--key", help="Trusted public key(s). Default: *.pub beside the bundle.", exists=True, dir_okay=False
    ),
    variant: str = typer.Option(None, help="Bundle variant to run (default: the agent's own choice)."),
    threads: int = typer.Option(None, min=1, help="onnxruntime intra-op threads."),
    out: Path = typer.Option(None, "--out", help="Write the result JSON here."),
) -> None:
    """The agent's unique count under many score thresholds and tracker settings, from one inference pass.

    Choose a setting on clips kept for selection, report it on others.
    """
    import json
    import tempfile

    import cv2
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from benchmarks.count_sweep import sweep_counting
    from edge_agent.app import StartupError
    from edge_agent.tracking.replay import check_grid, clip_paths, true_counts

    bundle = _resolve_bundle(bundle)
    if not (bundle / "manifest.json").is_file():
        raise typer.BadParameter(f"no bundle at {bundle} (no manifest.json)", param_hint="BUNDLE")
    grid_thresholds = _comma_list(thresholds, "--thresholds", float)
    grid_hits = _comma_list(min_hits, "--min-hits", int)
    ids = _comma_list(videos, "--videos", int)
    keys = _trusted_keys(bundle, key)
    console = _console()
    try:
        check_grid(grid_thresholds, grid_hits)
        clips = clip_paths(data, true_counts(data), ids)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    total = 0
    for clip in clips.values():  # for the progress bar only: the sweep reads every frame there is
        capture = cv2.VideoCapture(str(clip))
        total += int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        capture.release()
    columns = (TextColumn("detect"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with (
        tempfile.TemporaryDirectory(prefix="starfish-count-sweep-") as work,
        Progress(*columns, console=console) as bar,
    ):
        task = bar.add_task("detect", total=total or None)
        try:
            result = sweep_counting(
                bundle,
                keys,
                data,
                thresholds=grid_thresholds,
                min_hits=grid_hits,
                workdir=Path(work),
                videos=ids,
                variant=variant,
                threads=threads,
                on_frame=lambda: bar.advance(task),
            )
        except (ValueError, StartupError) as exc:
            raise typer.BadParameter(str(exc)) from exc
    table = Table(
        title=f"unique counts by the agent's tracker ({result.backend}, {result.variant}; the agent's threshold "
        f"{result.bundle_threshold:.3f}) on {data}: {sum(result.true.values())} true"
    )
    for column in ("score threshold", "min_hits", "counted", "error", "mean clip error"):
        table.add_column(column, justify="right")
    # Per-clip error, not the summed count's: one clip's false tracks can cancel another's misses in the sum.
    best = min(result.settings, key=lambda s: s.mean_clip_error)
    for s in result.settings:
        marker = " *" if s is best else ""
        table.add_row(
            f"{s.setting.score_threshold:.3f}",
            str(s.setting.min_hits),
            str(s.total_counted),
            f"{s.total_error:.0%}",
            f"{s.mean_clip_error:.0%}{marker}",
        )
    console.print(table)
    console.print("* lowest mean per-clip error on these clips: a choice to confirm on clips not used to make it")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        console.print(f"wrote {out}")


@app.command("counting")
def counting_command(
    bundle: Path = typer.Argument(..., help="Bundle directory (or a model directory holding bundle/).", exists=True),
    data: Path = typer.Option(
        ..., "--data", help="Dataset root with videos/*.mp4 and synth.json (true counts).", exists=True, file_okay=False
    ),
    videos: str = typer.Option(None, help="Comma-separated video ids (default: every video in synth.json)."),
    key: list[Path] = typer.Option(
        None, "--key", help="Trusted public key(s). Default: *.pub beside the bundle.", exists=True, dir_okay=False
    ),
    variant: str = typer.Option(None, help="Bundle variant to run (default: the agent's own choice)."),
    threads: int = typer.Option(None, min=1, help="onnxruntime intra-op threads."),
    host: str = typer.Option("127.0.0.1", help="MQTT broker the agent publishes to (loopback)."),
    port: int = typer.Option(1883, help="MQTT broker port."),
    out: Path = typer.Option(None, "--out", help="Write the result JSON here."),
) -> None:
    """Unique-count error of the real agent on whole clips (one camera per clip), against the true counts."""
    import json
    import tempfile

    from rich.table import Table

    from benchmarks.counting import measure_counting
    from edge_agent.app import StartupError

    bundle = _resolve_bundle(bundle)
    if not (bundle / "manifest.json").is_file():
        raise typer.BadParameter(f"no bundle at {bundle} (no manifest.json)", param_hint="BUNDLE")
    if not data.is_dir():
        raise typer.BadParameter(f"no dataset directory {data}", param_hint="--data")
    ids = _comma_list(videos, "--videos", int)
    keys = _trusted_keys(bundle, key)
    with tempfile.TemporaryDirectory(prefix="starfish-counting-") as work:
        try:
            result = measure_counting(
                bundle,
                keys,
                data,
                videos=ids,
                host=host,
                port=port,
                workdir=Path(work),
                variant=variant,
                threads=threads,
            )
        except (ValueError, StartupError) as exc:
            raise typer.BadParameter(str(exc)) from exc
    console = _console()
    table = Table(title=f"unique counts by the agent ({result.backend}, {result.variant}) on {data}")
    for column in ("clip", "frames", "counted", "true", "error"):
        table.add_column(column, justify="right")
    for c in result.clips:
        table.add_row(str(c.video_id), str(c.frames), str(c.counted), str(c.true), f"{c.error:.0%}")
    table.add_row(
        "all",
        str(sum(c.frames for c in result.clips)),
        str(result.total_counted),
        str(result.total_true),
        f"{result.total_error:.0%}",
    )
    console.print(table)
    console.print(
        f"mean per-clip error {result.mean_clip_error:.1%}, worst {result.worst_clip_error:.1%}, {result.fps:.1f} fps"
    )
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        console.print(f"wrote {out}")

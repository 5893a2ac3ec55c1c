"""`starfish agent …`: run the edge agent, print an example configuration, or run the self-contained demo.

Heavy imports (OpenCV, onnxruntime, paho) happen inside the commands so `starfish --help` stays fast.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from edge_agent.demo import ClipMaker

logger = logging.getLogger(__name__)

app = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False)

EXIT_CONFIG = 2  # bad configuration or an unusable model bundle: fix the input, retrying will not help


@app.command("run")
def run(
    config: Path = typer.Option(
        ...,
        "--config",
        "-c",
        help="Agent YAML file (see `starfish agent config --example`).",
        exists=True,
        dir_okay=False,
    ),
    console: bool = typer.Option(True, "--console/--no-console", help="Print a live status line."),
    summary_json: Path | None = typer.Option(None, help="Also write the end-of-run summary to this JSON file."),
    allow_rollback: bool = typer.Option(
        False,
        "--allow-rollback",
        help="Accept a bundle older than the newest this device has run (explicit rollback, logged).",
    ),
) -> None:
    """Run the agent until SIGTERM/SIGINT (or until every non-looping video file has ended)."""
    from rich.console import Console
    from rich.markup import escape

    from edge_agent.app import StartupError, build_agent
    from edge_agent.config import ConfigError, load_config, preflight

    out = Console(stderr=True)
    try:
        cfg = load_config(config)
        preflight(cfg)
    except ConfigError as exc:
        # One line, never wrapped: under systemd this is the whole story in the journal (exit 2: do not restart).
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(EXIT_CONFIG) from exc
    if allow_rollback:
        logger.warning("--allow-rollback: an older model bundle will be accepted for this start")
        cfg.detector.allow_rollback = True
    try:
        agent = build_agent(cfg)
    except StartupError as exc:
        # One line (systemd's journal and RestartPreventExitStatus=2 take it from here), no markup from the text.
        out.print(f"[red]cannot start:[/red] {escape(' '.join(str(exc).split()))}", soft_wrap=True)
        raise typer.Exit(EXIT_CONFIG) from exc
    code = run_until_signal(agent, console_interval=cfg.console_interval_s if console else None)
    summary = agent.summary()
    print_summary(out, summary)
    if summary_json is not None:
        import json

        from edge_agent.process_memory import peak_rss_mb

        record = {**summary.to_dict(), "peak_rss_mb": round(peak_rss_mb(), 1)}
        summary_json.write_text(json.dumps(record, indent=2, default=str) + "\n")
    blocked = agent.blocked_capture_threads
    if blocked:
        # Everything is flushed and closed; only a capture thread is still stuck inside OpenCV. Normal interpreter
        # shutdown would unwind it through C++ frames and abort (exit 134), so leave at once with our exit code.
        logger.warning("capture thread(s) of %s still blocked in OpenCV; exiting without waiting", blocked)
        _hard_exit(code)
    raise typer.Exit(code)


def _hard_exit(code: int) -> None:
    import os
    import sys

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_until_signal(agent, console_interval: float | None, on_line=None) -> int:
    """Run ``agent`` in this (main) thread with SIGTERM/SIGINT asking it to stop; optional console line thread."""
    from rich.console import Console

    def _stop(signum: int, _frame: object) -> None:
        logger.info("received %s: stopping", signal.Signals(signum).name)
        agent.stop()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    done = threading.Event()
    line_thread = None
    if console_interval:
        err = Console(stderr=True)
        emit = on_line or (lambda text: err.print(text, highlight=False))

        def _lines() -> None:
            while not done.wait(console_interval):
                emit(agent.console_line())

        line_thread = threading.Thread(target=_lines, name="console", daemon=True)
        line_thread.start()
    try:
        return agent.run()
    finally:
        done.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def print_summary(out, summary) -> None:
    from rich.table import Table

    table = Table(title="starfish agent summary", show_header=True)
    for column in ("camera", "frames", "unique count", "max count", "per-frame counts (count: frames)", "dropped"):
        table.add_column(column)
    for camera in summary.cameras:
        histogram = ", ".join(f"{k}: {v}" for k, v in camera.count_histogram.items()) or "-"
        table.add_row(
            camera.camera_id,
            str(camera.frames),
            str(camera.unique_count),
            str(camera.max_count),
            histogram,
            str(camera.dropped),
        )
    out.print(table)
    p50 = f", inference p50 {summary.inference_ms_p50:.1f} ms" if summary.inference_ms_p50 is not None else ""
    out.print(f"{summary.frames} frames in {summary.elapsed_s:.1f} s = {summary.fps:.1f} fps{p50}")


@app.command("config")
def config_cmd(
    example: bool = typer.Option(False, "--example", help="Print a commented example configuration."),
    check: Path | None = typer.Option(
        None,
        "--check",
        help="Validate this file (with env overrides): schema, and "
        "that the bundle and every trusted key exist and verify; then exit.",
    ),
) -> None:
    """Print an example configuration, or validate one."""
    from edge_agent.config import EXAMPLE_YAML, ConfigError, load_config, preflight

    if example:
        typer.echo(EXAMPLE_YAML, nl=False)
        return
    if check is None:
        typer.echo("give --example or --check FILE", err=True)
        raise typer.Exit(EXIT_CONFIG)
    from edge_agent.config_check import check_deployment

    try:
        cfg = load_config(check)
        preflight(cfg)  # what `run` needs from this machine: password variable, a creatable outbox
    except ConfigError as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(EXIT_CONFIG) from exc
    problems = check_deployment(cfg)
    if problems:
        typer.echo(f"configuration error: {check}: " + "; ".join(problems), err=True)
        raise typer.Exit(EXIT_CONFIG)
    typer.echo(
        f"{check}: valid ({len(cfg.cameras)} camera(s), device {cfg.device_id}); bundle "
        f"{cfg.detector.bundle} verifies with {len(cfg.detector.trusted_keys)} trusted key(s)"
    )


measure_app = typer.Typer(no_args_is_help=True, help="Measure the agent's goals (numbers for reports).")
app.add_typer(measure_app, name="measure")


@measure_app.command("pipeline")
def measure_pipeline_cmd(
    config: Path = typer.Option(
        ..., "--config", "-c", help="Agent YAML whose first camera is a video file.", exists=True, dir_okay=False
    ),
    frames: int = typer.Option(200, min=10, help="Frames to measure (from the start of the file)."),
    repeats: int = typer.Option(3, min=1, help="Interleaved detector-only / agent runs; medians are reported."),
) -> None:
    """Detector-only fps vs end-to-end agent fps (same bundle, back end, clip) and the agent's peak RSS."""
    import json

    from edge_agent.config import ConfigError, load_config
    from edge_agent.measure import measure_pipeline

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(EXIT_CONFIG) from exc
    typer.echo(json.dumps(measure_pipeline(cfg, frames, repeats).to_dict(), indent=2))


@measure_app.command("tracking")
def measure_tracking_cmd(
    data: Path = typer.Option(
        ..., help="Synthetic dataset root (`starfish data synth --out`).", exists=True, file_okay=False
    ),
    video: list[int] = typer.Option([0], help="Video id (repeat for several)."),
    tracker: list[str] = typer.Option(
        ["ours"], help="ours | bytetrack (repeat to compare; bytetrack needs the `trackers` package)."
    ),
    miss: float = typer.Option(0.1, min=0, max=1, help="Share of true boxes the simulated detector misses."),
    jitter: float = typer.Option(2.0, min=0, help="Box jitter (px, std)."),
    false_positives: float = typer.Option(0.05, min=0, max=1, help="Chance of a one-frame false box per frame."),
    low_score: float = typer.Option(
        0.0,
        min=0,
        max=1,
        help="Share of the misses still returned below the threshold (what ByteTrack's second pass can use).",
    ),
    seed: int = typer.Option(0, help="Noise seed."),
) -> None:
    """Unique-count error of the tracker(s) on synthetic videos' true tracks with detector-like noise (JSON lines)."""
    import json
    from dataclasses import asdict

    from edge_agent.measure import TRACKERS, measure_tracking

    unknown = sorted(set(tracker) - set(TRACKERS))
    if unknown:
        typer.echo(f"unknown tracker(s) {unknown}; known: {', '.join(TRACKERS)}", err=True)
        raise typer.Exit(EXIT_CONFIG)
    for video_id in video:
        for name in tracker:
            try:
                result = measure_tracking(
                    data,
                    video_id,
                    tracker=name,
                    miss=miss,
                    jitter=jitter,
                    false_positives=false_positives,
                    low_score=low_score,
                    seed=seed,
                )
            except (ValueError, RuntimeError) as exc:
                typer.echo(f"cannot measure: {exc}", err=True)
                raise typer.Exit(EXIT_CONFIG) from exc
            typer.echo(json.dumps(asdict(result)))


# The demo's clip maker, injected by whoever assembles the command line (`starfish_cli.py` hands it train's
# synthetic reef generator); the edge side never imports `train` itself.
_clip_maker: ClipMaker | None = None


def set_clip_maker(make_clip: ClipMaker | None) -> None:
    """Give `agent demo` a way to make its clip when no --clip is given."""
    global _clip_maker
    _clip_maker = make_clip


@app.command("demo")
def demo(
    broker_host: str = typer.Option("127.0.0.1", help="MQTT broker host (started locally if absent)."),
    broker_port: int = typer.Option(1883, help="MQTT broker port."),
    start_broker: bool = typer.Option(
        True,
        "--start-broker/--no-start-broker",
        help="Start the local mosquitto when no broker listens on a loopback host.",
    ),
    frames: int = typer.Option(150, min=10, max=3000, help="Frames in the generated clip."),
    clip: Path | None = typer.Option(
        None,
        "--clip",
        help="Run on this video instead of a generated synthetic clip (the true count is then unknown).",
        exists=True,
        dir_okay=False,
    ),
    workdir: Path = typer.Option(Path(".starfish-demo"), help="Where the clip, outbox and snapshots go."),
    bundle: Path = typer.Option(Path("models/demo"), help="Model bundle to run.", exists=True),
) -> None:
    """One command: synthetic reef clip + demo bundle + local Mosquitto -> live counts, then a summary."""
    from edge_agent.demo import run_demo

    raise typer.Exit(
        run_demo(
            broker_host,
            broker_port,
            frames,
            workdir,
            bundle,
            start_broker=start_broker,
            clip=clip,
            make_clip=_clip_maker,
        )
    )


if __name__ == "__main__":
    app()

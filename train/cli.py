"""`starfish train …`: thin wrappers around `train.api` (heavy imports happen inside the commands)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

logger = logging.getLogger(__name__)

app = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    help="Train the detector. Extra `--section.key=value` options override the config, e.g. "
    "`starfish train fit --preset smoke --data.root DIR --trainer.max_epochs 3`. Presets: train/configs/*.yaml.",
)
def fit(
    ctx: typer.Context,
    preset: str = typer.Option(None, "--preset", "-p", help="Named preset (smoke, gpu, synthetic)."),
    config: list[Path] = typer.Option([], "--config", "-c", help="YAML config file(s), applied after the preset."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config and exit."),
) -> None:
    from train.config import ConfigError, dump_yaml, load_config

    try:
        cfg = load_config(preset=preset, config_files=config, overrides=list(ctx.args))
    except ConfigError as exc:
        _fail(str(exc))
    if print_config:
        typer.echo(dump_yaml(cfg))
        return
    from edge_agent.dataset import DatasetError
    from train.api import fit as fit_fn
    from train.api import run_dir

    try:
        metrics = fit_fn(cfg)
    except (DatasetError, ConfigError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(metrics, indent=2, sort_keys=True))
    typer.echo(f"run directory: {run_dir(cfg)}")


@app.command(help="Evaluate a checkpoint: F2 at the best threshold, per-IoU F2, mAP@0.5, mAP@[.5:.95], frames/s.")
def evaluate(
    checkpoint: Path = typer.Argument(
        ..., help="Checkpoint (.ckpt) written by `starfish train fit`.", exists=True, dir_okay=False
    ),
    data: Path = typer.Option(
        ..., "--data", "-d", help="Dataset directory (train.csv + train_images/).", exists=True, file_okay=False
    ),
    video: list[int] = typer.Option([], "--video", help="Only these video ids (default: every frame)."),
    sequence: list[int] = typer.Option([], "--sequence", help="Only these sequence ids."),
    limit: int = typer.Option(0, "--limit", help="At most this many frames, evenly spread (0: all)."),
    out: Path = typer.Option(None, "--out", "-o", help="JSON output (default: <checkpoint>.eval.json)."),
    threads: int = typer.Option(0, "--threads", help="torch CPU threads (0: torch default)."),
    image_width: int = typer.Option(1280, help="Frame width, for clipping boxes."),
    image_height: int = typer.Option(720, help="Frame height, for clipping boxes."),
) -> None:
    import torch

    from edge_agent.dataset import DatasetError, ReefDataset
    from train.api import evaluate as evaluate_fn
    from train.checkpoint import CheckpointError, load_detector
    from train.data import even_subset

    if threads:
        torch.set_num_threads(threads)
    try:
        model, cfg, info = load_detector(checkpoint)
        records = ReefDataset.open(data, image_size=(image_width, image_height), check_images="exists").records
    except (CheckpointError, DatasetError) as exc:
        _fail(str(exc))
    if video:
        records = [r for r in records if r.video_id in set(video)]
    if sequence:
        records = [r for r in records if r.sequence in set(sequence)]
    records = even_subset(records, limit or None)
    if not records:
        _fail(f"no frames selected in {data} (videos {video or 'all'}, sequences {sequence or 'all'})")
    result = evaluate_fn(model, records, score_threshold=info.get("score_threshold"))
    result.update({"checkpoint": str(checkpoint), "data": str(data), "videos": sorted({r.video_id for r in records})})
    target = out or checkpoint.with_suffix(".eval.json")
    target.write_text(json.dumps(result, indent=2, sort_keys=True))
    typer.echo(json.dumps(result, indent=2, sort_keys=True))
    typer.echo(f"wrote {target}")


@app.command(help="Draw predicted boxes on an image, a directory of images or a video.")
def predict(
    checkpoint: Path = typer.Argument(..., help="Checkpoint (.ckpt).", exists=True, dir_okay=False),
    source: Path = typer.Argument(..., help="Image file, directory of images, or video file.", exists=True),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory."),
    threshold: float = typer.Option(None, "--threshold", help="Score threshold (default: the checkpoint's best-F2)."),
    threads: int = typer.Option(0, "--threads", help="torch CPU threads (0: torch default)."),
) -> None:
    import torch

    from train.checkpoint import CheckpointError, load_detector
    from train.predict import predict_source

    if threads:
        torch.set_num_threads(threads)
    if not source.exists():
        _fail(f"source not found: {source}")
    try:
        model, _, info = load_detector(checkpoint)
    except CheckpointError as exc:
        _fail(str(exc))
    chosen = float(threshold if threshold is not None else info.get("score_threshold", 0.5))
    try:
        summary = predict_source(model, source, out, chosen)
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(json.dumps(summary, indent=2))

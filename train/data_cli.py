"""`starfish data …`: the synthetic reef generator, the out-of-distribution validation renderer, COCO import, previews,
statistics.

Heavy imports (OpenCV, numpy, the generator) happen inside the commands so `starfish --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False)


def _option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Output directory (Kaggle layout is written inside)."),
    videos: int = typer.Option(3, help="Number of videos."),
    frames: int = typer.Option(100, help="Frames per video."),
    seed: int = typer.Option(0, help="Random seed: same seed, same dataset byte for byte."),
    width: int = typer.Option(1280, help="Frame width in pixels."),
    height: int = typer.Option(720, help="Frame height in pixels."),
    fps: float = typer.Option(10.0, help="Camera frame rate (sets motion and blur per frame)."),
    empty_fraction: float = typer.Option(
        0.5, help="Target share of frames without starfish (real data: ~0.8; default 0.5 gives more positives)."
    ),
    sequence_length: int = typer.Option(60, help="Mean frames per sequence (separate passes over the reef)."),
    min_size: int = typer.Option(20, help="Smallest starfish diameter in pixels."),
    max_size: int = typer.Option(150, help="Largest starfish diameter in pixels."),
    jpeg_quality: int = typer.Option(90, help="JPEG quality of train_images."),
    video: bool = typer.Option(True, "--video/--no-video", help="Also write videos/video_{id}.mp4."),
    style: str = typer.Option(
        "classic",
        help="classic (the original reef) or randomized (domain randomization: distractors, many "
        "starfish styles, outbreak crowds, wide water/light/blur ranges; see train/README.md).",
    ),
    outbreak_fraction: float = typer.Option(
        0.3, help="--style randomized: share of sequences that are COTS outbreaks (20-50 starfish per frame)."
    ),
    distractors_per_frame: tuple[int, int] = typer.Option(
        (3, 14), help="--style randomized: range of distractors (never boxed) per frame, drawn per video: LOW HIGH."
    ),
    workers: int = typer.Option(0, help="Render processes (0 = one per CPU core, 1 = in-process)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a dataset already in --out."),
) -> None:
    """Generate a synthetic underwater reef dataset with crown-of-thorns starfish (boxes + track ids)."""
    from pydantic import ValidationError
    from rich.console import Console

    from train.synth import SynthConfig, generate_dataset

    try:
        config = SynthConfig(
            videos=videos,
            frames=frames,
            seed=seed,
            width=width,
            height=height,
            fps=fps,
            empty_fraction=empty_fraction,
            sequence_length=sequence_length,
            min_size=min_size,
            max_size=max_size,
            jpeg_quality=jpeg_quality,
            write_video=video,
            workers=workers,
            style=style,
            outbreak_fraction=outbreak_fraction,
            distractors_per_frame=distractors_per_frame,
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{_option_name(str(err['loc'][0])) if err['loc'] else 'arguments'}: {err['msg']}" for err in exc.errors()
        )
        raise typer.BadParameter(problems) from None
    try:
        summary = generate_dataset(out, config, overwrite=overwrite, progress=True)
    except FileExistsError as exc:
        raise typer.BadParameter(str(exc), param_hint="--out") from None
    Console().print(
        f"[green]wrote[/green] {summary.frames} frames, {summary.boxes} boxes "
        f"({100 * summary.empty_fraction:.0f} % empty frames, "
        f"{sum(v.distinct_starfish for v in summary.videos)} distinct starfish) to {out} "
        f"in {summary.seconds:.1f} s ({summary.frames_per_second:.1f} frames/s)"
    )


@app.command()
def ood(
    out: Path = typer.Option(..., "--out", help="Output directory (Kaggle layout is written inside)."),
    videos: int = typer.Option(6, help="Number of videos."),
    frames: int = typer.Option(150, help="Frames per video."),
    seed: int = typer.Option(0, help="Random seed: same seed, same dataset byte for byte."),
    width: int = typer.Option(1280, help="Frame width in pixels."),
    height: int = typer.Option(720, help="Frame height in pixels."),
    fps: float = typer.Option(10.0, help="Frame rate written into the .mp4 files."),
    sequence_length: int = typer.Option(50, help="Mean frames per sequence (one camera pass)."),
    jpeg_quality: int = typer.Option(90, help="JPEG quality of train_images."),
    video: bool = typer.Option(True, "--video/--no-video", help="Also write videos/video_{id}.mp4."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a dataset already in --out."),
) -> None:
    """Render an out-of-distribution reef set (independent of `synth`) for VALIDATION ONLY, never training."""
    from pydantic import ValidationError
    from rich.console import Console

    from train.ood import OodConfig, generate_ood

    try:
        config = OodConfig(
            videos=videos,
            frames=frames,
            seed=seed,
            width=width,
            height=height,
            fps=fps,
            sequence_length=sequence_length,
            jpeg_quality=jpeg_quality,
            write_video=video,
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{_option_name(str(err['loc'][0])) if err['loc'] else 'arguments'}: {err['msg']}" for err in exc.errors()
        )
        raise typer.BadParameter(problems) from None
    try:
        summary = generate_ood(out, config, overwrite=overwrite, progress=True)
    except FileExistsError as exc:
        raise typer.BadParameter(str(exc), param_hint="--out") from None
    Console().print(
        f"[green]wrote[/green] {summary.frames} validation-only frames, {summary.boxes} boxes "
        f"({summary.empty_frames} empty frames, {sum(v.distinct_starfish for v in summary.videos)} distinct "
        f"starfish) to {out} in {summary.seconds:.1f} s ({summary.frames_per_second:.2f} frames/s)"
    )


@app.command("import-coco")
def import_coco(
    annotations: Path = typer.Argument(..., help="COCO JSON (CVAT / Label Studio export) of harvested frames."),
    images: Path = typer.Option(..., "--images", help="Directory the COCO file_name entries are relative to."),
    out: Path = typer.Option(..., "--out", help="Dataset root to write (Kaggle layout: train.csv + train_images/)."),
    category: list[str] = typer.Option(
        None, "--category", help="Category name(s) that mean starfish (default: starfish, cots, crown-of-thorns...)."
    ),
    first_video_id: int = typer.Option(0, "--first-video-id", min=0, help="video_id of the first source folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a dataset already in --out."),
) -> None:
    """Turn COCO labels of frames harvested from devices into a training dataset root (one video per folder)."""
    from rich.console import Console

    from train.coco_import import DEFAULT_CATEGORIES
    from train.coco_import import import_coco as run_import

    try:
        summary = run_import(
            annotations,
            images,
            out,
            categories=tuple(category) if category else DEFAULT_CATEGORIES,
            first_video_id=first_video_id,
            overwrite=overwrite,
        )
    except FileExistsError as exc:
        raise typer.BadParameter(str(exc), param_hint="--out") from None
    Console().print(
        f"[green]wrote[/green] {summary.frames} frames ({summary.boxes} boxes, {summary.empty_frames} empty) "
        f"at {summary.width}x{summary.height} in {len(summary.videos)} video(s) to {out}"
    )


@app.command()
def preview(
    root: Path = typer.Argument(
        ..., help="Dataset directory (train.csv + train_images/).", exists=True, file_okay=False
    ),
    out: Path = typer.Option(Path("preview.png"), "--out", help="Contact sheet image to write (.png or .jpg)."),
    frames: int = typer.Option(12, min=1, max=200, help="Number of frames on the sheet (frames with starfish first)."),
    columns: int = typer.Option(4, min=1, max=20, help="Thumbnails per row."),
    thumb_width: int = typer.Option(480, min=64, max=1920, help="Thumbnail width in pixels."),
) -> None:
    """Draw ground-truth boxes and track ids on a contact sheet of frames."""
    from rich.console import Console

    from edge_agent.dataset import DatasetError
    from train.synth.inspect import write_preview

    try:
        path = write_preview(root, out, frames=frames, columns=columns, thumb_width=thumb_width)
    except DatasetError as exc:
        raise typer.BadParameter(str(exc), param_hint="ROOT") from None
    Console().print(f"[green]wrote[/green] {path}")


@app.command()
def stats(
    root: Path = typer.Argument(
        ..., help="Dataset directory (train.csv + train_images/).", exists=True, file_okay=False
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the statistics as JSON here."),
) -> None:
    """Print dataset statistics: frames, boxes, empty-frame fraction, box sizes, per video."""
    import json

    from rich.console import Console
    from rich.table import Table

    from edge_agent.dataset import DatasetError
    from train.synth.inspect import dataset_statistics

    try:
        result = dataset_statistics(root)
    except DatasetError as exc:
        raise typer.BadParameter(str(exc), param_hint="ROOT") from None
    console = Console()
    console.print(
        f"{result['frames']} frames, {result['boxes']} boxes, {result['sequences']} sequences, "
        f"empty-frame fraction {result['empty_fraction']:.3f}"
    )
    sizes = result["box_side_px_percentiles"]
    if sizes:
        console.print("box side sqrt(w*h) px percentiles: " + ", ".join(f"p{k}={v:.1f}" for k, v in sizes.items()))
    table = Table("video", "frames", "sequences", "boxes", "empty", "distinct tracks", "max/frame")
    for video, row in result["per_video"].items():
        table.add_row(
            video,
            str(row["frames"]),
            str(row["sequences"]),
            str(row["boxes"]),
            f"{row['empty_fraction']:.2f}",
            str(row["distinct_tracks"]),
            str(row["max_boxes_per_frame"]),
        )
    console.print(table)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        console.print(f"[green]wrote[/green] {json_out}")


if __name__ == "__main__":
    app()

"""`starfish export …`: prune, ONNX, INT8, bundle, TensorRT, and the whole chain in one command.

Heavy libraries (torch, onnx, onnxruntime) are imported inside the commands so `starfish --help` stays light.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from edge_agent.bundle import GoldenFiles, VariantSource
    from export.source import SourceModel

# Timing honesty on a shared machine: libgomp's default active wait makes PyTorch's 2-thread OpenMP pool spin
# against the other processes (measured here: 3.0 s instead of 0.12 s per frame under load). Passive waiting is set
# before torch is first imported by any command (it has no effect once torch is loaded).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

app = typer.Typer(no_args_is_help=True, help="Prune, quantize and export a checkpoint to ONNX / TensorRT bundles.")

_KEY_HELP = "ed25519 private key (PEM) that signs the bundle (`starfish keys generate`)."


def _fail(exc: Exception, code: int = 2) -> typer.Exit:
    """One line naming the problem. Exit code 2: the input is wrong (fix it; retrying will not help); 1: this
    machine cannot do it (no TensorRT, the engine build failed)."""
    message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        width, height = (int(v) for v in value.lower().split("x"))
    except ValueError as exc:
        raise typer.BadParameter(f"expected WIDTHxHEIGHT, e.g. 640x384, got {value!r}") from exc
    return width, height


@app.command()
def onnx(
    checkpoint: Path = typer.Argument(
        ..., help="Training checkpoint (or pruned checkpoint from `export prune`).", exists=True, dir_okay=False
    ),
    out: Path = typer.Option(Path("model-fp32.onnx"), "--out", "-o", help="ONNX file to write."),
    size: str | None = typer.Option(None, help="Input WIDTHxHEIGHT (multiples of 32; default from the config)."),
    data: Path | None = typer.Option(None, help="Dataset root for the parity frames (default: the training one)."),
    parity_frames: int = typer.Option(20, help="Held-out frames for the PyTorch parity check (0: skip)."),
) -> None:
    """Export to ONNX (opset 17, fixed size, contract of edge_agent/preprocess.py) and check parity."""
    from export import checks
    from export.chain import _probe_tensors, _subset
    from export.onnx_export import ExportError, default_input_size, export_onnx
    from export.runners import onnx_runner, torch_runner
    from export.source import load_source

    try:
        source = load_source(checkpoint)
        width, height = _size(size) or default_input_size(source.cfg.max_size)
        path = export_onnx(source.model, out, width, height)
        if parity_frames > 0:
            records = _held_out(source, data)
            probe = _probe_tensors(_subset(records, parity_frames), [], parity_frames, width, height)
            result = checks.check_parity(
                torch_runner(source.model, width, height),
                onnx_runner(path),
                probe,
                score_floor=source.cfg.box_score_thresh,
                max_detections=source.cfg.box_detections_per_img,
            )
            if not result.passed:
                path.unlink()
                raise ExportError(f"parity with PyTorch failed: {result.problems[:3]}")
            typer.echo(
                f"parity: {result.matched}/{result.reference_detections} detections matched on "
                f"{result.frames} frames (min IoU {result.min_iou:.4f}, max |Δscore| "
                f"{result.max_score_diff:.1e})"
            )
    except (ExportError, OSError, ValueError) as exc:
        raise _fail(exc) from exc
    typer.echo(f"wrote {path} ({width}x{height})")


@app.command()
def int8(
    model: Path = typer.Argument(..., help="fp32 ONNX exported by `export onnx`.", exists=True, dir_okay=False),
    checkpoint: Path = typer.Option(
        ..., "--ckpt", help="Checkpoint whose training split provides calibration.", exists=True, dir_okay=False
    ),
    out: Path = typer.Option(Path("model-int8.onnx"), "--out", "-o", help="INT8 QDQ ONNX file to write."),
    data: Path | None = typer.Option(None, help="Dataset root (default: the checkpoint's training data)."),
    frames: int = typer.Option(100, help="Calibration frames drawn evenly from the training split."),
    method: str = typer.Option("minmax", help="Calibration: minmax, percentile or entropy."),
    activations: str = typer.Option(
        "symmetric",
        help="symmetric (int8, zero point 0: TensorRT) or asymmetric "
        "(uint8: onnxruntime on CPUs, the bundle's int8_cpu).",
    ),
) -> None:
    """Static INT8 quantization (QDQ, per-channel int8 weights) calibrated on training frames."""
    from export.onnx_export import ExportError
    from export.quantize import calibration_tensors, quantize_int8
    from export.source import load_source

    try:
        import onnx as onnx_lib

        shape = onnx_lib.load(str(model), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
        height, width = shape[2].dim_value, shape[3].dim_value
        source = load_source(checkpoint)
        train_records = _split(source, data)[0]
        path = quantize_int8(
            model,
            out,
            calibration_tensors(train_records, frames, width, height),
            method=method,
            activations=activations,
        )
    except (ExportError, OSError, ValueError) as exc:
        raise _fail(exc) from exc
    except Exception as exc:  # noqa: BLE001  onnx raises protobuf DecodeError for non-ONNX files
        raise _fail(ValueError(f"{model} is not a readable ONNX model: {exc}")) from exc
    typer.echo(f"wrote {path}")


def _overrides(items: list[str]) -> dict[str, object]:
    """``SECTION.KEY=VALUE`` strings to typed values, parsed by the training config's own parser."""
    from train.config import ConfigError, dotted_overrides

    try:
        return dotted_overrides(items)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--set") from exc


@app.command()
def prune(
    checkpoint: Path = typer.Argument(..., help="Training checkpoint.", exists=True, dir_okay=False),
    ratio: float = typer.Option(0.5, "--ratio", "-r", help="Fraction of backbone channels to remove."),
    head_ratio: float | None = typer.Option(None, help="Fraction of box-head width to remove (default: ratio)."),
    rpn_ratio: float | None = typer.Option(None, help="Fraction of RPN conv channels to remove (default: ratio)."),
    fpn_ratio: float | None = typer.Option(None, help="Fraction of FPN channels to remove (default: ratio)."),
    proposals: int | None = typer.Option(None, help="Test-time proposals kept (default: as trained)."),
    epochs: int = typer.Option(1, help="Fine-tuning epochs after pruning (0: none)."),
    steps: int | None = typer.Option(None, help="Fine-tune for exactly this many steps instead of --epochs."),
    select: str | None = typer.Option(
        None, help="Keep the best validation's weights by val/f2 (in-distribution) or val/select_f2."
    ),
    data: Path | None = typer.Option(None, help="Dataset root (default: the checkpoint's training data)."),
    size: str | None = typer.Option(None, help="Input WIDTHxHEIGHT used to count MACs."),
    out: Path = typer.Option(Path("pruned.ckpt"), "--out", "-o", help="Pruned checkpoint to write."),
    eval_frames: int | None = typer.Option(None, help="Cap on held-out frames for F2 (default: all)."),
    override: list[str] = typer.Option(
        None,
        "--set",
        help="Fine-tuning setting SECTION.KEY=VALUE over the checkpoint's training config (repeatable), "
        "e.g. --set optim.lr=0.0002.",
    ),
) -> None:
    """Structured pruning (torch-pruning) + fine-tuning; reports params, MACs, size and F2 before and after.

    Given an already pruned checkpoint with all ratios 0, it only fine-tunes further (the record of the first
    pruning and of every fine-tuning round is kept)."""
    import io

    import torch

    from export import checks
    from export.chain import ChainOptions, _fine_tune, _plain, _subset
    from export.onnx_export import ExportError, default_input_size
    from export.prune import PruneConfig, model_stats, prune_detector, set_test_proposals
    from export.runners import torch_runner
    from export.source import load_source, save_pruned

    overrides = _overrides(override or [])  # before any model is loaded: a typo costs nothing

    def size_mb(model: torch.nn.Module) -> float:
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        return buffer.tell() / 1e6

    try:
        source = load_source(checkpoint)
        width, height = _size(size) or default_input_size(source.cfg.max_size)
        records = _subset(_held_out(source, data), eval_frames)
        rows = {}

        def measure(name: str, model: torch.nn.Module) -> None:
            predictions, truths = checks.predict(torch_runner(model, width, height), records, width, height)
            acc = checks.accuracy(predictions, truths)
            rows[name] = {
                **model_stats(model, width, height).to_dict(),
                "state_dict_mb": size_mb(model),
                "f2": acc.best_f2,
                "threshold": acc.best_threshold,
                "map50": acc.map50,
            }

        measure("before", source.model)
        plan = PruneConfig(
            ratio=ratio, head_ratio=head_ratio, rpn_ratio=rpn_ratio, fpn_ratio=fpn_ratio, proposals=proposals
        )
        model, cfg = prune_detector(source.model, source.cfg, plan, width, height)
        earlier = dict(source.info.get("pruning") or {})
        done: dict = {"prune": earlier.get("prune") or dict(vars(plan)), "rounds": list(earlier.get("rounds") or [])}
        if epochs > 0 or steps:
            opts = ChainOptions(
                checkpoint,
                out.parent,
                Path(),
                data_root=data,
                fine_tune_epochs=epochs,
                fine_tune_steps=steps,
                fine_tune_select=select,
                fine_tune_overrides=overrides,
            )
            model, summary = _fine_tune(model, source, opts)
            done["fine_tune"] = _plain(summary)
            done["rounds"].append({"steps": steps, "epochs": None if steps else epochs, "settings": overrides})
            set_test_proposals(model, cfg.rpn_pre_nms_top_n_test, cfg.rpn_post_nms_top_n_test)
        measure("after", model)
        # A second round keeps pointing at the training checkpoint the channels were removed from.
        pruned_from = source.info.get("pruned_from") or source.sha256
        save_pruned(model, cfg, {**source.info, "pruned_from": pruned_from, "pruning": done}, out)
    except (ExportError, OSError, ValueError) as exc:
        raise _fail(exc) from exc
    typer.echo(json.dumps(rows, indent=2))
    typer.echo(f"wrote {out}")


@app.command()
def bundle(
    checkpoint: Path = typer.Option(
        ..., "--ckpt", help="Checkpoint the models were exported from (provenance).", exists=True, dir_okay=False
    ),
    fp32: Path | None = typer.Option(None, help="fp32 ONNX.", exists=True, dir_okay=False),
    int8_model: Path | None = typer.Option(None, "--int8", help="INT8 ONNX.", exists=True, dir_okay=False),
    key: Path = typer.Option(..., "--key", "-k", help=_KEY_HELP),
    out: Path = typer.Option(Path("bundle"), "--out", "-o", help="Bundle directory (or .tar) to write."),
    version: int = typer.Option(..., help="Bundle version (must increase per model name)."),
    parent_version: int | None = typer.Option(None, help="Version this one replaces."),
    score_threshold: float | None = typer.Option(None, help="Default: the checkpoint's best-F2 threshold."),
    force: bool = typer.Option(False, "--force", help="Replace an existing bundle."),
    golden_frames: int = typer.Option(
        3, min=0, max=16, help="Golden frames for the device's staging check (from the held-out video; 0: none)."
    ),
    data: Path | None = typer.Option(None, help="Dataset root for the golden frames (default: the checkpoint's)."),
) -> None:
    """Write a signed bundle from already exported ONNX files (no metrics measured: see `export all`).

    Golden frames come from the checkpoint's held-out video; without it (data not found) smooth random frames
    are used, with a warning: they check that the model is the one exported, not that it finds starfish."""
    from edge_agent.bundle import BundleError, InputSpec, TrainingInfo, VariantSource, load_private_key, write_bundle
    from export.onnx_export import ExportError, check_onnx
    from export.provenance import MODEL_NAME
    from export.source import load_source

    variants = {name: VariantSource(p) for name, p in (("fp32", fp32), ("int8", int8_model)) if p is not None}
    if not variants:
        raise typer.BadParameter("give --fp32 and/or --int8")
    try:
        import onnx as onnx_lib

        for path in (p.path for p in variants.values()):
            check_onnx(path)
        dims = onnx_lib.load(str(next(iter(variants.values())).path)).graph.input[0].type.tensor_type.shape.dim
        source = load_source(checkpoint)
        width, height = dims[3].dim_value, dims[2].dim_value
        threshold = source.score_threshold if score_threshold is None else score_threshold
        golden = _golden(source, data, golden_frames, variants, threshold, width, height) if golden_frames else None
        manifest = write_bundle(
            out,
            name=MODEL_NAME,
            version=version,
            parent_version=parent_version,
            classes=source.classes,
            input_spec=InputSpec.for_size(width, height),
            variants=variants,
            score_threshold=threshold,
            training=TrainingInfo(
                config_digest=source.config_digest,
                data_fingerprint=source.data_fingerprint,
                checkpoint_sha256=source.sha256,
            ),
            private_key=load_private_key(key),
            overwrite=force,
            golden=golden,
        )
    except (BundleError, ExportError, OSError, ValueError) as exc:
        raise _fail(exc) from exc
    frames = f", {len(manifest.golden.frames)} golden frames" if manifest.golden else ""
    typer.echo(f"wrote {out}: {manifest.name} v{manifest.version}, variants {', '.join(manifest.variants)}{frames}")


@app.command("all")
def all_(
    checkpoint: Path | None = typer.Argument(
        None, help="Training checkpoint (omit with --untrained).", exists=True, dir_okay=False
    ),
    out: Path = typer.Option(Path("export-out"), "--out", "-o", help="Output directory (bundle/, report.*)."),
    key: Path = typer.Option(..., "--key", "-k", help=_KEY_HELP),
    untrained: bool = typer.Option(False, help="Use an untrained demo-size model (no checkpoint, no data)."),
    data: Path | None = typer.Option(None, help="Dataset root (default: the checkpoint's training data)."),
    ratio: float = typer.Option(0.5, help="Fraction of backbone channels to prune."),
    head_ratio: float | None = typer.Option(None, help="Fraction of box-head width to prune (default: ratio)."),
    rpn_ratio: float | None = typer.Option(None, help="Fraction of RPN conv channels to prune (default: ratio)."),
    fpn_ratio: float | None = typer.Option(None, help="Fraction of FPN channels to prune (default: ratio)."),
    proposals: int | None = typer.Option(None, help="Test-time proposals kept (default: as trained)."),
    epochs: int = typer.Option(1, help="Fine-tuning epochs after pruning (0: none)."),
    fine_tune_steps: int | None = typer.Option(None, help="Fine-tune for exactly this many steps instead."),
    fine_tune_select: str | None = typer.Option(
        None, help="Keep the best validation's weights by val/f2 (in-distribution) or val/select_f2."
    ),
    pruned: Path | None = typer.Option(
        None,
        help="A pruned, fine-tuned checkpoint of CHECKPOINT (`export prune` or an earlier run's pruned.ckpt): "
        "reused instead of pruning and fine-tuning again.",
        exists=True,
        dir_okay=False,
    ),
    fine_tune_frames: int | None = typer.Option(None, help="Cap on training frames per fine-tuning epoch."),
    size: str | None = typer.Option(None, help="Input WIDTHxHEIGHT (default from the config)."),
    calibration_frames: int = typer.Option(100, help="INT8 calibration frames from the training split."),
    calibration_method: str = typer.Option("minmax", help="INT8 calibration: minmax, percentile or entropy."),
    eval_frames: int | None = typer.Option(None, help="Cap on held-out frames for F2/mAP (default: all)."),
    ood_data: Path | None = typer.Option(
        None,
        "--ood-data",
        help="Out-of-distribution set that picks each "
        "variant's score threshold (default: the checkpoint's data.ood_root).",
    ),
    count_clips: list[Path] = typer.Option(
        [],
        "--count-clips",
        help="A generated clip set (videos/ + synth.json, e.g. `starfish data ood`) on which each variant's counting "
        "threshold and min_hits are calibrated; repeat for several (their mean per-clip errors are averaged).",
    ),
    latency_runs: int = typer.Option(30, help="Timed inferences per variant."),
    threads: int = typer.Option(2, help="CPU threads for every variant."),
    version: int | None = typer.Option(None, help="Bundle version (default: previous in --out + 1)."),
    no_fp32: bool = typer.Option(False, "--no-fp32", help="Ship only the INT8 variants (smaller bundle)."),
    cpu_int8: bool = typer.Option(
        True, "--cpu-int8/--no-cpu-int8", help="Also build `int8_cpu` (uint8 activations) for onnxruntime on CPUs."
    ),
) -> None:
    """prune -> fine-tune -> fp32 ONNX -> INT8 ONNX -> parity/accuracy -> signed bundle -> report."""
    from edge_agent.bundle import BundleError
    from export.chain import ChainOptions, run_chain
    from export.counting import load_clip_sets
    from export.onnx_export import ExportError
    from export.prune import PruneConfig

    if (checkpoint is None) != untrained:
        raise typer.BadParameter("give a CHECKPOINT, or --untrained for a demo model without one")
    try:
        clip_sets = load_clip_sets(count_clips)  # a wrong path fails now, not after an hour of export
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--count-clips") from exc
    try:
        report = run_chain(
            ChainOptions(
                checkpoint=checkpoint,
                out=out,
                private_key=key,
                data_root=data,
                prune=PruneConfig(
                    ratio=ratio, head_ratio=head_ratio, rpn_ratio=rpn_ratio, fpn_ratio=fpn_ratio, proposals=proposals
                ),
                fine_tune_epochs=epochs,
                fine_tune_steps=fine_tune_steps,
                fine_tune_select=fine_tune_select,
                pruned_checkpoint=pruned,
                input_size=_size(size),
                calibration_frames=calibration_frames,
                calibration_method=calibration_method,
                eval_frames=eval_frames,
                ood_root=ood_data,
                count_clips=clip_sets,
                latency_runs=latency_runs,
                threads=threads,
                version=version,
                keep_fp32=not no_fp32,
                cpu_int8=cpu_int8,
                fine_tune_overrides={"data.train_limit": fine_tune_frames} if fine_tune_frames else {},
            )
        )
    except (BundleError, ExportError, OSError, ValueError) as exc:
        raise _fail(exc) from exc
    typer.echo((out / "report.md").read_text())
    typer.echo(f"goals: {json.dumps(report['goals'])}")


@app.command()
def tensorrt(
    bundle_path: Path = typer.Argument(..., help="Verified bundle directory.", exists=True),
    key: list[Path] = typer.Option(
        ..., "--key", "-k", help="Trusted public key(s) to verify the bundle.", exists=True, dir_okay=False
    ),
    precision: str = typer.Option("fp16", help="fp16 (from the fp16 ONNX, else fp32) or int8 (from the QDQ ONNX)."),
    cache_dir: Path | None = typer.Option(None, help="Engine cache (default: <bundle>.engines beside it)."),
    workspace_mb: int = typer.Option(1024, help="Builder workspace limit in MiB."),
    state_dir: Path | None = typer.Option(
        None,
        help="Device state dir holding the engine-cache key (use the agent's `state_dir` so it accepts the "
        "engine; default: $STARFISH_STATE_DIR or ~/.local/state/starfish).",
    ),
) -> None:
    """Build a TensorRT engine for this device from a bundle and store it under its cache key (authenticated with
    the device's engine-cache key)."""
    from edge_agent.bundle import BundleError, load_bundle
    from edge_agent.trt import TensorRTError, TensorRTUnavailable, build_engine

    if precision not in ("fp16", "int8"):
        raise typer.BadParameter("precision must be fp16 or int8")
    try:
        verified = load_bundle(bundle_path, key)
        # fp16 engines from the fp16 variant (half the bytes to ship), or from fp32 in bundles that predate it.
        wanted = ("int8",) if precision == "int8" else ("fp16", "fp32")
        variant = next((v for v in wanted if v in verified.manifest.variants), None)
        if variant is None:
            raise BundleError(
                f"{precision} needs the {' or '.join(wanted)} variant; bundle has {sorted(verified.manifest.variants)}"
            )
        cache = cache_dir or bundle_path.parent / f"{bundle_path.name}.engines"
        # The verified bytes, not the path: what is built is what was checked.
        engine = build_engine(
            verified.read_variant(variant),
            cache,
            precision=precision,
            workspace_bytes=workspace_mb << 20,
            state_dir=state_dir,
        )
    except (TensorRTUnavailable, TensorRTError) as exc:
        raise _fail(exc, code=1) from exc
    except (BundleError, OSError) as exc:
        raise _fail(exc) from exc
    typer.echo(f"engine: {engine}")


def _split(source, data: Path | None):  # type: ignore[no-untyped-def]
    from export.chain import ChainOptions, _records

    return _records(ChainOptions(source.path, Path("."), Path(), data_root=data), source)


def _held_out(source, data: Path | None) -> list:  # type: ignore[no-untyped-def]
    return _split(source, data)[1]


def _golden(
    source: SourceModel,
    data: Path | None,
    count: int,
    variants: dict[str, VariantSource],
    threshold: float,
    width: int,
    height: int,
) -> GoldenFiles:
    from export.golden import encode_frames, frames_from_records, random_frames, record_golden
    from export.onnx_export import ExportError

    try:
        frames = frames_from_records(_held_out(source, data), count)
    except ExportError as exc:
        typer.secho(f"warning: golden frames are random frames: {exc}", fg=typer.colors.YELLOW, err=True)
        frames = []
    pngs = encode_frames(frames or random_frames(width, height, count), width, height)
    return record_golden(pngs, variants, threshold, width, height)

"""`starfish retrain`: the cloud retraining job (fine-tune -> export -> release gate -> release). See train/retrain.py.

Exit codes: 0 the candidate passed the gate (and was released unless --no-release), 1 the gate refused it (the
reasons are in the report and on stderr), 2 a user mistake (one line).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import typer

# Extra `--section.key=value` options are training-config overrides, as in `starfish train fit`.
CONTEXT_SETTINGS = {"allow_extra_args": True, "ignore_unknown_options": True}


def retrain(
    ctx: typer.Context,
    data: list[Path] = typer.Option(
        ..., "--data", help="Dataset root(s), Kaggle layout (repeatable); the first one's held-out video gates."
    ),
    out: Path = typer.Option(..., "--out", help="Work directory: runs/, candidate/ (export), report.json/.md."),
    key: Path = typer.Option(..., "--key", help="Private key (PEM) that signs the candidate bundle."),
    store: str = typer.Option(
        ...,
        "--store",
        help="Bundle store (released <name>-<version>.tar files): a directory or s3://bucket/prefix (boto3).",
    ),
    checkpoints: Path = typer.Option(
        ..., "--checkpoints", help="Checkpoint registry (<sha256>.ckpt of each released model); kept by this job."
    ),
    url_base: str = typer.Option(None, "--url-base", help="URL under which --store is served (to release)."),
    presign: int = typer.Option(
        None, "--presign", help="s3:// store, instead of --url-base: announce a presigned GET URL valid SECONDS."
    ),
    s3_endpoint_url: str = typer.Option(
        None, "--s3-endpoint-url", help="S3-compatible endpoint (MinIO, Ceph, R2); default: boto3's configuration."
    ),
    release_key: Path = typer.Option(None, "--release-key", help="Announcement signing key (default: --key)."),
    bundle_key: list[Path] = typer.Option(
        None, "--bundle-key", help="Public key(s) the released bundle verifies with (default: --key's)."
    ),
    released: Path = typer.Option(None, "--released", help="The released bundle (default: newest tar in --store)."),
    checkpoint: Path = typer.Option(
        None, "--checkpoint", help="The released bundle's checkpoint (default: looked up in --checkpoints)."
    ),
    epochs: int = typer.Option(1, "--epochs", min=1, help="Fine-tuning epochs."),
    f2_tolerance: float = typer.Option(0.02, "--f2-tolerance", min=0.0, help="F2 points the candidate may lose."),
    latency_budget: float = typer.Option(
        0.10, "--latency-budget", min=0.0, help="Fraction the median latency may grow (0.10: 10 %)."
    ),
    gate_variant: str = typer.Option(None, "--gate-variant", help="Variant both are scored on (default int8_cpu)."),
    eval_frames: int = typer.Option(None, "--eval-frames", min=1, help="Cap on held-out frames (default: all)."),
    latency_runs: int = typer.Option(20, "--latency-runs", min=1, help="Timed runs per bundle (interleaved)."),
    threads: int = typer.Option(2, "--threads", min=1, help="onnxruntime threads for scoring and timing."),
    prune_ratio: float = typer.Option(0.0, "--prune-ratio", min=0.0, max=0.95, help="Channel pruning ratio."),
    head_ratio: float = typer.Option(None, "--head-ratio", min=0.0, max=0.95, help="Box-head pruning ratio."),
    prune_epochs: int = typer.Option(0, "--prune-epochs", min=0, help="Fine-tuning epochs after pruning."),
    calibration_frames: int = typer.Option(100, "--calibration-frames", min=1, help="INT8 calibration frames."),
    parity_frames: int = typer.Option(20, "--parity-frames", min=1, help="Frames of the ONNX parity check."),
    count_clips: list[Path] = typer.Option(
        [],
        "--count-clips",
        help="Clip set (videos/ + synth.json) on which the candidate's counting settings are calibrated "
        "(repeatable; `starfish export all --count-clips`).",
    ),
    allow_uncalibrated_count: bool = typer.Option(
        False,
        "--allow-uncalibrated-count",
        help="Release a candidate without counting settings although the released bundle has them.",
    ),
    no_release: bool = typer.Option(False, "--no-release", help="Gate only: release nothing even if it passes."),
    train_only: bool = typer.Option(False, "--train-only", help="Stop after fine-tuning (no export, no gate)."),
    expires_days: float = typer.Option(7.0, "--expires-days", min=0.001, help="Days until devices ignore it."),
    broker: str = typer.Option(None, "--broker", help="host:port: publish the release retained on the fleet topic."),
    fleet: str = typer.Option("default", "--fleet", help="Fleet name (topic {prefix}/fleet/{fleet}/model)."),
    prefix: str = typer.Option("starfish", "--prefix", help="MQTT topic prefix."),
) -> None:
    """Fine-tune the released model on new data, export it, gate it against the released model, release it.

    Extra `--section.key=value` options override the training config (e.g. `--optim.lr 0.001`,
    `--trainer.devices 4 --trainer.strategy ddp`)."""
    from export.rollout import parse_broker
    from export.s3_store import S3Store, is_s3_url
    from train.retrain import GateConfig, RetrainError, RetrainOptions
    from train.retrain import retrain as run

    if s3_endpoint_url and not is_s3_url(store):
        raise RetrainError("--s3-endpoint-url is for an s3:// store only")

    endpoint = parse_broker(broker) if broker else None
    report = run(
        RetrainOptions(
            data=list(data),
            out=out,
            key=key,
            store=S3Store.from_url(store, s3_endpoint_url) if is_s3_url(store) else Path(store),
            checkpoints=checkpoints,
            url_base=url_base,
            presign_s=presign,
            release_key=release_key,
            bundle_keys=list(bundle_key or []),
            released=released,
            checkpoint=checkpoint,
            epochs=epochs,
            overrides=list(ctx.args),
            gate=GateConfig(
                f2_tolerance=f2_tolerance,
                latency_budget=latency_budget,
                variant=gate_variant,
                eval_frames=eval_frames,
                latency_runs=latency_runs,
                threads=threads,
            ),
            prune_ratio=prune_ratio,
            head_ratio=head_ratio,
            prune_epochs=prune_epochs,
            calibration_frames=calibration_frames,
            parity_frames=parity_frames,
            count_clips=list(count_clips),
            allow_uncalibrated_count=allow_uncalibrated_count,
            release=not no_release,
            train_only=train_only,
            expires_in=timedelta(days=expires_days),
            broker=endpoint,
            fleet=fleet,
            prefix=prefix,
        )
    )
    if "rank" in report:  # a DDP worker rank: rank 0 reports
        return
    typer.echo(f"report: {out / 'report.md'}")
    gate = report.get("gate")
    if gate is None:
        typer.echo(f"trained: {report['training']['checkpoint']}")
        return
    if not gate["passed"]:
        for reason in gate["reasons"]:
            typer.secho(f"release gate refused the candidate: {reason}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    release = report.get("release")
    typer.echo(
        f"release gate passed: F2 {gate['released']['f2']:.3f} -> {gate['candidate']['f2']:.3f}, "
        f"median {gate['released']['latency']['median_ms']:.1f} -> {gate['candidate']['latency']['median_ms']:.1f} ms"
    )
    if release:
        typer.echo(f"released v{release['version']}: {release['url']}")


COMMAND = retrain

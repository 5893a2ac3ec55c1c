"""`starfish bundle verify|info`: inspect signed model bundles on any machine (torch-free)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, help="Inspect and verify signed model bundles (torch-free).")


@app.command()
def verify(
    bundle: Path = typer.Argument(..., help="Bundle directory or .tar.", exists=True),
    key: list[Path] = typer.Option(
        ..., "--key", "-k", help="Trusted ed25519 public key (PEM); repeatable.", exists=True, dir_okay=False
    ),
    running_version: int | None = typer.Option(None, help="Refuse versions not newer than this one."),
    allow_rollback: bool = typer.Option(False, help="Accept an older version (explicit rollback)."),
) -> None:
    """Check signature, manifest and every file hash; exit 2 with one line naming the problem if any check fails."""
    from edge_agent.bundle import BundleError, load_public_key
    from edge_agent.bundle import verify_bundle as _verify

    try:
        keys = [load_public_key(k) for k in key]
    except BundleError as exc:  # name the unusable key file, before any verdict on the bundle
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    try:
        manifest = _verify(bundle, keys, running_version=running_version, allow_rollback=allow_rollback)
    except BundleError as exc:
        typer.secho(f"REFUSED ({type(exc).__name__}): {' '.join(str(exc).split())}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    golden = f", {len(manifest.golden.frames)} golden frames" if manifest.golden else ""
    typer.secho(f"OK: {manifest.name} v{manifest.version}, variants {', '.join(manifest.variants)}{golden}", fg="green")


@app.command()
def info(
    bundle: Path = typer.Argument(..., help="Bundle directory or .tar.", exists=True),
    as_json: bool = typer.Option(False, "--json", help="Print the raw manifest JSON."),
) -> None:
    """Show a bundle's manifest WITHOUT verifying it (use `verify` before trusting anything shown)."""
    import tarfile

    from rich.console import Console
    from rich.table import Table

    from edge_agent.bundle import MANIFEST_NAME, MAX_MANIFEST_BYTES, BundleError, parse_manifest
    from edge_agent.bundle.files import TarMembers, read_bundle_file

    root = Path(os.path.realpath(bundle))
    try:
        if root.is_file() and tarfile.is_tarfile(root):
            with TarMembers(root) as members:
                raw = members.read(MANIFEST_NAME, MAX_MANIFEST_BYTES)
        elif root.is_dir():
            raw = read_bundle_file(root, MANIFEST_NAME, MAX_MANIFEST_BYTES)
        else:
            raise BundleError(f"{bundle} is not a bundle directory or .tar")
        manifest = parse_manifest(raw)
    except (BundleError, OSError, tarfile.TarError) as exc:
        typer.secho(f"cannot read {bundle}: {' '.join(str(exc).split())}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(json.dumps(manifest.model_dump(mode="json"), indent=2))
        return
    console = Console()
    console.print(
        f"[bold]{manifest.name}[/] v{manifest.version} (parent {manifest.parent_version}), "
        f"created {manifest.created_at.isoformat()}  [yellow](not verified)[/]"
    )
    console.print(
        f"classes {list(manifest.classes)}; input {list(manifest.input.shape)} {manifest.input.dtype} "
        f"{manifest.input.colour_order} {manifest.input.resize}; score_threshold {manifest.score_threshold}"
    )
    table = Table("variant", "file", "size", "sha256", "threshold", "F2", "mAP@0.5", "latency ms", "counting")
    for name, v in manifest.variants.items():
        marker = " (default)" if name == manifest.default_variant else ""
        counting = v.counting
        table.add_row(
            name + marker,
            v.file,
            f"{v.size:,}",
            v.sha256[:12],
            _fmt(manifest.threshold_for(name)),
            _fmt(v.f2),
            _fmt(v.map50),
            _fmt(v.latency_ms),
            f"thr {counting.score_threshold:g}, min_hits {counting.min_hits}" if counting else "-",
        )
    console.print(table)
    if manifest.golden is None:
        console.print(f"golden frames: none (schema {manifest.schema_version})")
    else:
        frames = manifest.golden.frames
        console.print(
            f"golden frames: {len(frames)} ({', '.join(f.file for f in frames)}), expectations "
            f"{manifest.golden.expectations.file} sha256 {manifest.golden.expectations.sha256[:12]}, "
            f"{sum(f.size for f in manifest.golden.files()):,} bytes in all"
        )
    t = manifest.training
    console.print(f"training: config {t.config_digest}, data {t.data_fingerprint}, checkpoint {t.checkpoint_sha256}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"

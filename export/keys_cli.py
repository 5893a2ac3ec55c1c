"""`starfish keys generate`: create an ed25519 key pair for signing model bundles."""

from __future__ import annotations

import os
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, help="Generate ed25519 signing keys for model bundles.")


@app.command()
def generate(
    private: Path = typer.Option(Path("keys/bundle_signing.pem"), "--private", help="Private key PEM to write."),
    public: Path = typer.Option(None, "--public", help="Public key PEM (default: <private stem>.pub)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing key files."),
) -> None:
    """Write a new key pair. Keep the private key off devices; copy the public key to their trusted keys.

    Set STARFISH_KEY_PASSPHRASE to encrypt the private key (PKCS#8, best available encryption).
    """
    from edge_agent.bundle import BundleError, generate_keypair, key_id

    public = public or private.with_suffix(".pub")
    existing = [str(p) for p in (private, public) if p.exists()]
    if existing and not force:
        typer.secho(
            f"error: {existing[0]} already exists; pass --force to replace the key pair", fg=typer.colors.RED, err=True
        )
        raise typer.Exit(2)
    passphrase = os.environ.get("STARFISH_KEY_PASSPHRASE")
    try:
        key = generate_keypair(private, public, overwrite=force, passphrase=passphrase.encode() if passphrase else None)
    except BundleError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    except OSError as exc:
        typer.secho(f"error: cannot write {exc.filename}: {exc.strerror}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"private key: {private} (mode 0600, keep secret)\npublic key:  {public}\nkey id:      {key_id(key)}")

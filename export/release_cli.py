"""`starfish release BUNDLE`: store a bundle's .tar and print (and optionally publish) its signed announcement."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import typer


def _fail(message: str) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def release(
    bundle: Path = typer.Argument(..., help="Signed bundle directory or .tar to release."),
    store: str = typer.Option(
        ..., "--store", help="Bundle store: a directory (served over HTTP(S)) or s3://bucket/prefix (boto3)."
    ),
    url_base: str = typer.Option(
        None,
        "--url-base",
        help="URL under which the store is served (for s3://: + the object key; a public bucket or a CDN).",
    ),
    presign: int = typer.Option(
        None,
        "--presign",
        help="s3:// only, instead of --url-base: announce a presigned GET URL valid SECONDS (at most 604800, "
        "SigV4's 7 days; not less than --expires-days).",
    ),
    s3_endpoint_url: str = typer.Option(
        None, "--s3-endpoint-url", help="S3-compatible endpoint (MinIO, Ceph, R2); default: boto3's configuration."
    ),
    key: Path = typer.Option(..., "--key", help="Release private key (PEM, `starfish keys generate`)."),
    bundle_key: list[Path] = typer.Option(
        None, "--bundle-key", help="Public key(s) the bundle must verify with (default: the release key's)."
    ),
    expires_days: float = typer.Option(7.0, "--expires-days", min=0.001, help="Days until devices ignore it."),
    min_agent_version: str = typer.Option(
        "0",
        "--min-agent-version",
        help="Oldest agent that may install it (raised to the first agent that reads the bundle's manifest schema).",
    ),
    platform: list[str] = typer.Option(["any"], "--platform", help="Platform tags (linux-aarch64...) or 'any'."),
    wave: int = typer.Option(0, "--wave", min=0, help="Rollout wave number."),
    canary: list[str] = typer.Option(
        None,
        "--canary",
        help="Staged rollout: these devices (comma-separated or repeated) get it first on their …/model/set; the "
        "fleet topic only if at most --max-failure-share of them fail. Needs --broker.",
    ),
    max_failure_share: float = typer.Option(
        0.2, "--max-failure-share", min=0.0, max=1.0, help="Failed share of the canaries that stops the rollout."
    ),
    wave_timeout: float = typer.Option(
        1800.0, "--wave-timeout", min=1.0, help="Seconds a canary has to commit (probation included)."
    ),
    device: list[str] = typer.Option(None, "--device", help="Device ids this wave targets (default: all)."),
    rollback: bool = typer.Option(False, "--rollback", help="A signed explicit rollback to this bundle's version."),
    out: Path = typer.Option(None, "--out", help="Also write the announcement to this file."),
    broker: str = typer.Option(None, "--broker", help="host:port: publish retained on the fleet topic."),
    fleet: str = typer.Option("default", "--fleet", help="Fleet name (topic {prefix}/fleet/{fleet}/model)."),
    prefix: str = typer.Option("starfish", "--prefix", help="MQTT topic prefix."),
) -> None:
    """Verify BUNDLE, write <name>-<version>.tar into --store, sign the announcement and print it on stdout.

    An s3:// store takes its region and credentials from boto3's default chain (AWS_* variables, ~/.aws, an
    instance role)."""
    from pydantic import ValidationError

    from edge_agent.bundle import BundleError, load_private_key, load_public_key
    from edge_agent.mqtt.topics import Topics
    from edge_agent.update.announcement import Rollout
    from export.release import make_release, publish
    from export.rollout import RolloutError, parse_broker, staged_rollout
    from export.s3_store import S3Store, is_s3_url

    canaries = [d.strip() for item in canary or [] for d in item.split(",") if d.strip()]
    if canaries and not broker:
        _fail("--canary needs --broker (the canaries' results are read from it)")
    try:
        endpoint = parse_broker(broker) if broker else None  # before anything is stored or signed
    except RolloutError as exc:
        _fail(str(exc))
    wave_result = None
    passphrase = os.environ.get("STARFISH_KEY_PASSPHRASE")
    try:
        private = load_private_key(key, passphrase.encode() if passphrase else None)
        keys = [load_public_key(p) for p in bundle_key] if bundle_key else [private.public_key()]
        rollout = Rollout(wave=wave, devices=tuple(device) if device else None, max_failure_share=max_failure_share)
        if s3_endpoint_url and not is_s3_url(store):
            _fail("--s3-endpoint-url is for an s3:// store only")
        target = S3Store.from_url(store, s3_endpoint_url) if is_s3_url(store) else Path(store)
        result = make_release(
            bundle,
            store=target,
            url_base=url_base,
            presign_s=presign,
            release_key=private,
            bundle_keys=keys,
            expires_in=timedelta(days=expires_days),
            min_agent_version=min_agent_version,
            platforms=tuple(platform),
            rollout=rollout,
            rollback=rollback,
        )
        if out is not None:
            out.write_bytes(result.payload)
        if endpoint is not None:
            host, port = endpoint
            if canaries:
                wave_result = staged_rollout(
                    result.announcement,
                    private,
                    host=host,
                    port=port,
                    canaries=canaries,
                    max_failure_share=max_failure_share,
                    timeout_s=wave_timeout,
                    prefix=prefix,
                    fleet=fleet,
                )
            else:
                publish(
                    result.payload,
                    host=host,
                    port=port,
                    topic=Topics(prefix=prefix, device_id="release").fleet_model(fleet),
                )
    except (BundleError, OSError) as exc:
        _fail(f"release refused: {exc}")
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        _fail(f"release refused: {problems}")
    except ValueError as exc:  # RolloutError included
        _fail(f"release refused: {exc}")
    if wave_result is not None:
        for name, (outcome, why) in wave_result.devices.items():
            typer.echo(f"canary {name}: {outcome} ({why})", err=True)
        if wave_result.stopped:
            typer.secho(
                f"rollout stopped: {100 * wave_result.failure_share:.0f} % of the canaries failed "
                f"(more than {100 * max_failure_share:.0f} %); the fleet topic was not published",
                fg=typer.colors.RED,
                err=True,
            )
            raise typer.Exit(1)
        typer.echo(f"canaries passed; published retained on {wave_result.fleet_topic}", err=True)
    typer.echo(result.payload.decode())


# A single command (`starfish release BUNDLE ...`), not a sub-app: starfish_cli registers `COMMAND` directly.
COMMAND = release

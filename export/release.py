"""Release a bundle (cloud side): put its `.tar` in a bundle store and sign an announcement for the fleet.

The store is a directory that any HTTP(S) server serves (``--url-base`` is where that server exposes it), or an
``s3://bucket/prefix`` (`export.s3_store`: the tar is built here as for a directory, uploaded with boto3 and checked
where it landed; the URL is ``--url-base`` + the object key, or a presigned GET URL). The
bundle is verified before anything is written — a release never publishes what a device would refuse — and the
`.tar` is written atomically (temporary file, fsync, rename), so a device never fetches half of one. The
announcement (`edge_agent.update.announcement`) names the tar's exact size and sha256, so a device can cap and
check its download; publishing it retained on ``{prefix}/fleet/{fleet}/model`` reaches devices that are offline
now when they reconnect.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.bundle import MANIFEST_NAME, SIGNATURE_NAME, BundleError, VerifiedBundle, load_bundle
from edge_agent.bundle.files import sha256_file
from edge_agent.update.announcement import Announcement, Rollout, sign_announcement, version_tuple
from export.s3_store import MAX_PRESIGN_S, S3Store, StoreError

logger = logging.getLogger(__name__)
# Two tools of one process (a wave watcher and its publisher) must not share a client id: the broker would drop one.
_CLIENTS = itertools.count()


@dataclass(frozen=True)
class Release:
    location: str  # where the .tar now lives: a path in a directory store, or s3://bucket/key
    announcement: Announcement
    payload: bytes  # the signed announcement as it goes on the wire


def store_bundle(bundle: Path, store: Path, bundle_keys: list[Ed25519PublicKey]) -> tuple[Path, str, int, int]:
    """Verify ``bundle`` (directory or .tar) and write ``store/<name>-<version>.tar``; returns (path, name,
    version, size)."""
    return _store_verified(load_bundle(bundle, bundle_keys), store, bundle_keys)


def _store_verified(
    verified: VerifiedBundle, store: Path, bundle_keys: list[Ed25519PublicKey]
) -> tuple[Path, str, int, int]:
    """`store_bundle` for a bundle already verified against ``bundle_keys``."""
    manifest = verified.manifest
    store.mkdir(parents=True, exist_ok=True)
    dest = store / f"{manifest.name}-{manifest.version}.tar"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=store)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            if verified.is_tar:
                with open(verified.root, "rb") as src:
                    shutil.copyfileobj(src, handle)
            else:
                # Only the signed files (model variants and golden frames), flat, in a fixed order: the archive the
                # device's loader accepts.
                names = [MANIFEST_NAME, SIGNATURE_NAME, *sorted(entry.file for _, entry in manifest.files())]
                with tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    for name in names:
                        info = tar.gettarinfo(str(verified.root / name), arcname=name)
                        info.uid = info.gid = 0
                        info.uname = info.gname = ""
                        with open(verified.root / name, "rb") as src:
                            tar.addfile(info, src)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    # What was written must still be the verified bundle (a source changed mid-copy is refused here).
    load_bundle(dest, bundle_keys, expected_name=manifest.name)
    return dest, manifest.name, manifest.version, dest.stat().st_size


def make_release(
    bundle: Path,
    *,
    store: Path | S3Store,
    url_base: str | None,
    release_key: Ed25519PrivateKey,
    bundle_keys: list[Ed25519PublicKey],
    expires_in: timedelta = timedelta(days=7),
    min_agent_version: str = "0",
    platforms: tuple[str, ...] = ("any",),
    rollout: Rollout | None = None,
    rollback: bool = False,
    presign_s: int | None = None,
    now: datetime | None = None,
) -> Release:
    """Store the bundle and sign its announcement. Raises `BundleError` / `ValueError` (`StoreError`) on bad input.

    A directory store needs ``url_base``; an `S3Store` needs exactly one of ``url_base`` (public bucket or CDN:
    the URL is ``url_base`` + the object key) and ``presign_s`` (a presigned GET URL, which must outlive the
    announcement, so ``presign_s >= expires_in``)."""
    check_url_choice(store, url_base, presign_s, expires_in)
    verified = load_bundle(bundle, bundle_keys)
    needed = verified.manifest.min_agent_version()
    if version_tuple(needed) > version_tuple(min_agent_version):
        # An older agent cannot read this manifest's schema: it must refuse the announcement, not fail the download.
        logger.info("release: min_agent_version %s -> %s (the bundle's manifest schema)", min_agent_version, needed)
        min_agent_version = needed
    if isinstance(store, S3Store):
        with tempfile.TemporaryDirectory(prefix="starfish-release-") as tmp:
            tar, name, version, size = _store_verified(verified, Path(tmp), bundle_keys)
            sha256 = sha256_file(tar)
            key = store.key(tar.name)
            created = now or datetime.now(timezone.utc)
            store.put(tar, key, sha256=sha256, size=size)
        # Signed after `created`, so the URL outlives the announcement: created + presign_s >= expires_at.
        url = store.presign(key, presign_s) if presign_s is not None else f"{str(url_base).rstrip('/')}/{key}"
        location = store.uri(key)
    else:
        assert url_base is not None  # check_url_choice
        tar, name, version, size = _store_verified(verified, store, bundle_keys)
        sha256 = sha256_file(tar)
        created = now or datetime.now(timezone.utc)
        url, location = f"{url_base.rstrip('/')}/{tar.name}", str(tar)
    announcement = Announcement(
        name=name,
        version=version,
        url=url,
        sha256=sha256,
        size=size,
        created_at=created,
        expires_at=created + expires_in,
        min_agent_version=min_agent_version,
        platforms=platforms,
        rollout=rollout or Rollout(),
        rollback=rollback,
    )
    logger.info("release %s: %s (%d bytes)", announcement.describe(), location, size)
    return Release(location, announcement, sign_announcement(announcement, release_key))


def check_url_choice(store: Path | S3Store, url_base: str | None, presign_s: int | None, expires_in: timedelta) -> None:
    """Before any upload: the URL devices will get must be plain http(s) that they can fetch until the expiry.
    `StoreError` otherwise (the retraining job calls this before it trains)."""
    if not isinstance(store, S3Store):
        if url_base is None:
            raise StoreError("a directory store needs --url-base (where an HTTP(S) server serves it)")
        if presign_s is not None:
            raise StoreError("--presign is for an s3:// store only")
        return
    if (url_base is None) == (presign_s is None):
        raise StoreError(
            "an s3:// store needs one of --url-base (a public bucket or a CDN in front of it) and --presign SECONDS "
            "(a presigned GET URL): devices fetch over plain http(s)"
        )
    if presign_s is not None and not 1 <= presign_s <= MAX_PRESIGN_S:
        raise StoreError(f"--presign must be 1..{MAX_PRESIGN_S} seconds (SigV4's 7-day cap), got {presign_s}")
    if presign_s is not None and presign_s < expires_in.total_seconds():
        raise StoreError(
            f"the presigned URL ({presign_s} s) would expire before the announcement ({expires_in.total_seconds():.0f}"
            " s): raise --presign or lower --expires-days"
        )


def connect(host: str, port: int, role: str) -> Any:
    """A connected paho client (network loop not started) for the publisher's tools; `BundleError` if unreachable."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"starfish-{role}-{os.getpid()}-{next(_CLIENTS)}")
    try:
        client.connect(host, port)
    except OSError as exc:
        raise BundleError(f"cannot reach the MQTT broker {host}:{port}: {exc}") from exc
    return client


def publish(payload: bytes, *, host: str, port: int, topic: str, timeout_s: float = 10.0, retain: bool = True) -> None:
    """Publish ``payload`` at QoS 1 on ``topic`` (retained unless told otherwise) and wait for the broker's ack."""
    client = connect(host, port, "release")
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=timeout_s)
        if not info.is_published():
            raise BundleError(f"the broker {host}:{port} did not acknowledge the announcement on {topic}")
    finally:
        client.disconnect()
        client.loop_stop()
    logger.info("published the announcement%s on %s (%s:%d)", " retained" if retain else "", topic, host, port)

"""Bundle fixtures shared by the export, edge-agent and benchmark tests.

* ``bundle_keys`` (session): a throwaway ed25519 key pair ``BundleKeys(private, public)``.
* ``tiny_bundle`` (session): ``TinyBundle(path, public_key)`` — a signed bundle directory holding an untrained tiny
  Faster R-CNN (input 224x128) exported to ONNX per the contract, variant ``fp32``. Treat it as read-only; copy it
  (``shutil.copytree``) or ``rebundle`` it before changing anything.
* ``tar_bundle(source, dest)``, ``signed_announcement(tar, url, release_key, version)``: what a release stores and
  announces.
* ``rebundle(source, dest, private_key, **changes)``: write a new signed bundle with the files of ``source`` and
  manifest fields changed (e.g. ``version=2, parent_version=1``), to test updates and rollbacks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from edge_agent.bundle import MANIFEST_NAME, SIGNATURE_NAME, generate_keypair, load_private_key, parse_manifest


class BundleKeys(NamedTuple):
    private: Path
    public: Path


class TinyBundle(NamedTuple):
    path: Path
    public_key: Path


@pytest.fixture(scope="session")
def bundle_keys(tmp_path_factory: pytest.TempPathFactory) -> BundleKeys:
    root = tmp_path_factory.mktemp("bundle-keys")
    keys = BundleKeys(root / "test_signing.pem", root / "test_signing.pub")
    generate_keypair(keys.private, keys.public)
    return keys


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, bundle_keys: BundleKeys) -> TinyBundle:
    pytest.importorskip("torch", reason="building the tiny bundle needs the `train` extra (torch)")
    from export.demo import untrained_bundle

    path = tmp_path_factory.mktemp("tiny-bundle") / "bundle"
    untrained_bundle(path, bundle_keys.private)
    return TinyBundle(path, bundle_keys.public)


def rebundle(source: Path, dest: Path, private_key: Path, **changes: Any) -> Path:
    """Copy ``source``'s files into a new bundle at ``dest`` with manifest fields replaced by ``changes``, signed
    with ``private_key`` (the source's signature is not checked: this is a test helper)."""
    from edge_agent.bundle.signing import sign

    manifest = parse_manifest((source / MANIFEST_NAME).read_bytes())
    data = manifest.model_dump(mode="json")
    data.update(json.loads(json.dumps(changes, default=str)))
    new = type(manifest).model_validate(data)
    dest.mkdir(parents=True)
    for variant in new.variants.values():
        (dest / variant.file).write_bytes((source / variant.file).read_bytes())
    raw = new.to_json_bytes()
    (dest / MANIFEST_NAME).write_bytes(raw)
    (dest / SIGNATURE_NAME).write_bytes(sign(load_private_key(private_key), raw))
    return dest


def tar_bundle(source: Path, dest: Path) -> Path:
    """Write ``source``'s files as a flat bundle ``.tar`` (what `starfish release` stores) at ``dest``."""
    import tarfile

    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for file in sorted(source.iterdir()):
            tar.add(file, arcname=file.name)
    return dest


def signed_announcement(tar: Path, url: str, release_key: Path, version: int, **changes: Any) -> bytes:
    """A signed announcement of the bundle ``tar`` at ``url`` (name `starfish-cots`, valid for a day, any
    platform); ``changes`` replace announcement fields."""
    from datetime import datetime, timedelta, timezone

    from edge_agent.bundle.files import sha256_file
    from edge_agent.update.announcement import Announcement, sign_announcement

    now = datetime.now(timezone.utc)
    fields: dict[str, Any] = dict(
        name="starfish-cots",
        version=version,
        url=url,
        sha256=sha256_file(tar),
        size=tar.stat().st_size,
        created_at=now,
        expires_at=now + timedelta(days=1),
        platforms=["any"],
    )
    fields.update(changes)
    return sign_announcement(Announcement(**fields), load_private_key(release_key))

"""Verify and load a signed bundle, torch-free: signature first, then manifest schema, then every file hash.

Order matters: nothing in `manifest.json` is trusted (not even parsed as a manifest) before its signature verifies
against one of the device's trusted keys.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.bundle.errors import BundleError, HashMismatchError, ManifestError, SignatureError, VersionError
from edge_agent.bundle.files import is_tar, sha256_file, unpack_tar
from edge_agent.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest, parse_manifest
from edge_agent.bundle.signing import PublicKeyLike, as_public_keys, key_id, verify_signature

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle directory whose signature and file hashes have been checked."""

    root: Path
    manifest: Manifest
    key_id: str

    def variant_path(self, name: str | None = None) -> Path:
        """Path of a variant's model file (``None``: the manifest's `default_variant`)."""
        variant = self.manifest.default_variant if name is None else name
        if variant not in self.manifest.variants:
            raise BundleError(
                f"bundle {self.manifest.name} v{self.manifest.version} has no variant {variant!r}; "
                f"it has {sorted(self.manifest.variants)}"
            )
        return self.root / self.manifest.variants[variant].file


def check_version(manifest: Manifest, running_version: int | None, *, allow_rollback: bool = False) -> None:
    """Raise `VersionError` unless ``manifest.version`` is newer than ``running_version`` (or rollback is asked)."""
    if running_version is None or manifest.version > running_version:
        return
    if allow_rollback:
        logger.warning(
            "accepting %s v%d over running v%d: explicit rollback", manifest.name, manifest.version, running_version
        )
        return
    raise VersionError(
        f"bundle {manifest.name} v{manifest.version} is not newer than the running v{running_version} "
        "(ask for an explicit rollback to accept it)"
    )


def verify_bundle(
    path: str | os.PathLike,
    trusted_keys: PublicKeyLike | Iterable[PublicKeyLike],
    *,
    running_version: int | None = None,
    allow_rollback: bool = False,
    expected_name: str | None = None,
) -> Manifest:
    """Check a bundle directory or `.tar` and return its manifest; raise a `BundleError` subclass if it fails.

    Checks, in order: signature over `manifest.json` (`SignatureError`), manifest schema (`ManifestError`,
    `UnsupportedSchemaError`), model name (`ManifestError`), version vs ``running_version`` (`VersionError`), every
    named file's size and sha256 (`HashMismatchError`).
    """
    path = Path(path)
    if is_tar(path):
        with tempfile.TemporaryDirectory(prefix="starfish-verify-") as tmp:
            root = unpack_tar(path, Path(tmp) / "bundle")
            return _verify_dir(root, trusted_keys, running_version, allow_rollback, expected_name)[0]
    return _verify_dir(path, trusted_keys, running_version, allow_rollback, expected_name)[0]


def load_bundle(
    path: str | os.PathLike,
    trusted_keys: PublicKeyLike | Iterable[PublicKeyLike],
    *,
    running_version: int | None = None,
    allow_rollback: bool = False,
    expected_name: str | None = None,
    unpack_to: str | os.PathLike | None = None,
) -> VerifiedBundle:
    """Verify a bundle (see `verify_bundle`) and return it ready to use.

    A `.tar` is unpacked first into ``unpack_to`` (a new directory; default: a fresh temporary directory that the
    caller owns) and verified there, so the files used afterwards are exactly the ones that were checked.
    """
    path = Path(path)
    if is_tar(path):
        dest = Path(unpack_to) if unpack_to is not None else Path(tempfile.mkdtemp(prefix="starfish-bundle-")) / "b"
        root = unpack_tar(path, dest)
    else:
        root = path
    manifest, signer = _verify_dir(root, trusted_keys, running_version, allow_rollback, expected_name)
    return VerifiedBundle(root=root.resolve(), manifest=manifest, key_id=signer)


def _verify_dir(
    root: Path,
    trusted_keys: PublicKeyLike | Iterable[PublicKeyLike],
    running_version: int | None,
    allow_rollback: bool,
    expected_name: str | None,
) -> tuple[Manifest, str]:
    if not root.is_dir():
        raise BundleError(f"{root} is neither a bundle directory nor a bundle .tar")
    keys = as_public_keys(trusted_keys)
    manifest_path, signature_path = root / MANIFEST_NAME, root / SIGNATURE_NAME
    if not manifest_path.is_file():
        raise ManifestError(f"{root} has no {MANIFEST_NAME}: not a bundle")
    if not signature_path.is_file():
        raise SignatureError(f"{root} has no {SIGNATURE_NAME}: unsigned bundles are refused")
    raw = manifest_path.read_bytes()
    signer = verify_signature(raw, signature_path.read_bytes(), keys)
    manifest = parse_manifest(raw)
    if expected_name is not None and manifest.name != expected_name:
        raise ManifestError(f"bundle is for model {manifest.name!r}, expected {expected_name!r}")
    check_version(manifest, running_version, allow_rollback=allow_rollback)
    for variant, entry in manifest.variants.items():
        file_path = root / entry.file
        if not file_path.is_file():
            raise HashMismatchError(f"variant {variant!r}: file {entry.file} named by the manifest is missing")
        size = file_path.stat().st_size
        if size != entry.size:
            raise HashMismatchError(f"variant {variant!r}: {entry.file} is {size} bytes, manifest says {entry.size}")
        digest = sha256_file(file_path)
        if digest != entry.sha256:
            raise HashMismatchError(
                f"variant {variant!r}: sha256 of {entry.file} is {digest}, manifest says {entry.sha256}"
            )
    expected = {MANIFEST_NAME, SIGNATURE_NAME, *(v.file for v in manifest.variants.values())}
    unexpected = sorted(p.name for p in root.iterdir() if p.name not in expected)
    if unexpected:
        # Harmless (nothing reads them) but worth a word: unsigned files do not belong inside a bundle.
        logger.warning("bundle %s holds files the manifest does not name (ignored): %s", root, unexpected)
    signer_id = key_id(signer)
    logger.info("verified bundle %s v%d (%s) signed by key %s", manifest.name, manifest.version, root, signer_id)
    return manifest, signer_id

"""Verify and load a signed bundle, torch-free: signature first, then manifest schema, then every file hash.

Order matters: nothing in `manifest.json` is trusted (not even parsed as a manifest) before its signature verifies
against one of the device's trusted keys, and model files are read no further than the size the signed manifest
states (TUF's rule: trust the metadata, then fetch bounded bytes).

The bundle path is resolved once (`realpath`) before anything is read, so a `current -> v7` link that flips while
the agent starts cannot mix two bundles. A `.tar` is read in place (no temporary directory to leave behind).
Detectors never reopen a model by path: `VerifiedBundle.read_variant` reads the file once, checks its size and
sha256 against the signed manifest again, and returns those very bytes to build the session from — a file swapped
after `load_bundle` returned is refused, not loaded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from edge_agent.bundle.errors import (
    BundleError,
    GoldenError,
    HashMismatchError,
    ManifestError,
    SignatureError,
    TooLargeError,
    VersionError,
)
from edge_agent.bundle.files import TarMembers, is_tar, read_bundle_file, sha256_bytes, unpack_tar
from edge_agent.bundle.golden import GoldenExpectations, parse_golden
from edge_agent.bundle.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    SIGNATURE_NAME,
    BundleFile,
    Manifest,
    parse_manifest,
)
from edge_agent.bundle.signing import SIGNATURE_LENGTH, PublicKeyLike, as_public_keys, key_id, verify_signature

logger = logging.getLogger(__name__)
# TensorRT engines built from a bundle live beside it (`<bundle>.trt-cache`), never inside its signed files.
ENGINE_CACHE_SUFFIX = ".trt-cache"

# (file name, max bytes) -> the file's bytes; FileNotFoundError when absent.
_Reader = Callable[[str, int], bytes]


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose signature and file hashes have been checked.

    ``root`` is the resolved bundle directory, or the resolved `.tar` file when ``is_tar``.
    """

    root: Path
    manifest: Manifest
    key_id: str
    is_tar: bool = False

    def variant_name(self, name: str | None = None) -> str:
        """``name`` checked against the manifest (``None``: the manifest's `default_variant`)."""
        variant = self.manifest.default_variant if name is None else name
        if variant not in self.manifest.variants:
            raise BundleError(
                f"bundle {self.manifest.name} v{self.manifest.version} has no variant {variant!r}; "
                f"it has {sorted(self.manifest.variants)}"
            )
        return variant

    def variant_path(self, name: str | None = None) -> Path:
        """Path of a variant's model file, for tools that need one on disk (detectors use `read_variant`)."""
        entry = self.manifest.variants[self.variant_name(name)]
        if self.is_tar:
            raise BundleError(
                f"{self.root} is a .tar read in place: its files have no path of their own "
                "(use read_variant, or load_bundle(..., unpack_to=DIR))"
            )
        return self.root / entry.file

    def display_path(self, name: str | None = None) -> Path:
        """Where a variant's file lives, for messages (inside the `.tar` for a tar bundle)."""
        return self.root / self.manifest.variants[self.variant_name(name)].file

    def read_variant(self, name: str | None = None) -> bytes:
        """The variant's model bytes, read once and checked again against the signed size and sha256.

        Build sessions / parsers from these bytes, never by reopening the path: what runs is what was verified.
        """
        variant = self.variant_name(name)
        return self._read_again(f"variant {variant!r}", self.manifest.variants[variant])

    def read_golden(self) -> tuple[GoldenExpectations, list[tuple[str, bytes]]] | None:
        """The signed golden frames: `golden.json` parsed and ``(file, image bytes)`` in its frame order, each read
        once and checked again against the manifest; None when the bundle ships none (schema 1/2, or none written).

        Raises `GoldenError` when golden.json disagrees with the manifest (other frames, unknown variants).
        """
        golden = self.manifest.golden
        if golden is None:
            return None
        spec = parse_golden(self._read_again("golden", golden.expectations))
        signed = [entry.file for entry in golden.frames]
        if list(spec.frames) != signed:
            raise GoldenError(f"golden.json names the frames {list(spec.frames)}; the manifest signs {signed}")
        unknown = sorted(set(spec.variants) - set(self.manifest.variants))
        if unknown:
            raise GoldenError(f"golden.json has expectations for variants the bundle lacks: {unknown}")
        return spec, [(entry.file, self._read_again("golden", entry)) for entry in golden.frames]

    def _read_again(self, label: str, entry: BundleFile) -> bytes:
        with ExitStack() as stack:
            members = stack.enter_context(TarMembers(self.root)) if self.is_tar else None
            data = _read_named_bytes(_reader(self.root, members), label, entry.file, entry.size)
        digest = sha256_bytes(data)
        if len(data) != entry.size or digest != entry.sha256:
            raise HashMismatchError(
                f"{label}: {entry.file} changed since the bundle was verified "
                f"({len(data)} bytes, sha256 {digest}; the manifest says {entry.size} bytes, {entry.sha256})"
            )
        return data

    def engine_cache_dir(self) -> Path:
        """Default home of TensorRT engines built from this bundle: beside it, never inside it."""
        return self.root.parent / f"{self.root.name}{ENGINE_CACHE_SUFFIX}"


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
    named file's size and sha256 — variants and golden frames alike (`HashMismatchError`; a file resolving outside the
    bundle: `BundleError`).
    """
    return load_bundle(
        path, trusted_keys, running_version=running_version, allow_rollback=allow_rollback, expected_name=expected_name
    ).manifest


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

    A `.tar` is read in place; with ``unpack_to`` (a new directory) it is unpacked there first and the directory
    is verified and returned instead, for tools that need the model files on disk.
    """
    root = Path(os.path.realpath(path))
    tar = is_tar(root)
    if tar and unpack_to is not None:
        root = Path(os.path.realpath(unpack_tar(root, Path(unpack_to))))
        tar = False
    elif not tar and not root.is_dir():
        raise BundleError(f"{path} is neither a bundle directory nor a bundle .tar")
    with ExitStack() as stack:
        members = stack.enter_context(TarMembers(root)) if tar else None
        reader = _reader(root, members)
        manifest, signer = _verify(root, reader, trusted_keys, running_version, allow_rollback, expected_name)
        try:
            present = members.names() if members is not None else [p.name for p in root.iterdir()]
        except OSError as exc:
            raise BundleError(f"cannot list the bundle {root}: {exc.strerror or exc}") from exc
    expected = {MANIFEST_NAME, SIGNATURE_NAME, *(entry.file for _, entry in manifest.files())}
    unexpected = sorted(name for name in present if name not in expected)
    if unexpected:
        # Harmless (nothing reads them) but worth a word: unsigned files do not belong inside a bundle.
        logger.warning("bundle %s holds files the manifest does not name (ignored): %s", root, unexpected)
    return VerifiedBundle(root=root, manifest=manifest, key_id=signer, is_tar=tar)


def _reader(root: Path, members: TarMembers | None) -> _Reader:
    if members is not None:
        return members.read
    return lambda name, max_bytes: read_bundle_file(root, name, max_bytes)


def _read_named_bytes(reader: _Reader, label: str, file: str, size: int) -> bytes:
    try:
        return reader(file, size)
    except FileNotFoundError as exc:
        raise HashMismatchError(f"{label}: file {file} named by the manifest is missing") from exc
    except TooLargeError as exc:
        raise HashMismatchError(f"{label}: {exc}; the manifest says {size} bytes") from exc


def _verify(
    root: Path,
    reader: _Reader,
    trusted_keys: PublicKeyLike | Iterable[PublicKeyLike],
    running_version: int | None,
    allow_rollback: bool,
    expected_name: str | None,
) -> tuple[Manifest, str]:
    keys = as_public_keys(trusted_keys)
    try:
        raw = reader(MANIFEST_NAME, MAX_MANIFEST_BYTES)
    except FileNotFoundError as exc:
        raise ManifestError(f"{root} has no {MANIFEST_NAME}: not a bundle") from exc
    except TooLargeError as exc:
        raise ManifestError(f"{root}: {exc}") from exc
    try:
        # One byte more than a signature holds: a longer file is refused by length, without reading it all.
        signature = reader(SIGNATURE_NAME, SIGNATURE_LENGTH + 1)
    except FileNotFoundError as exc:
        raise SignatureError(f"{root} has no {SIGNATURE_NAME}: unsigned bundles are refused") from exc
    except TooLargeError as exc:
        raise SignatureError(f"{SIGNATURE_NAME} must be {SIGNATURE_LENGTH} bytes of ed25519: {exc}") from exc
    signer = verify_signature(raw, signature, keys)
    manifest = parse_manifest(raw)
    if expected_name is not None and manifest.name != expected_name:
        raise ManifestError(f"bundle is for model {manifest.name!r}, expected {expected_name!r}")
    check_version(manifest, running_version, allow_rollback=allow_rollback)
    for label, entry in manifest.files():
        data = _read_named_bytes(reader, label, entry.file, entry.size)
        if len(data) != entry.size:
            raise HashMismatchError(f"{label}: {entry.file} is {len(data)} bytes, manifest says {entry.size}")
        digest = sha256_bytes(data)
        if digest != entry.sha256:
            raise HashMismatchError(f"{label}: sha256 of {entry.file} is {digest}, manifest says {entry.sha256}")
    signer_id = key_id(signer)
    logger.info("verified bundle %s v%d (%s) signed by key %s", manifest.name, manifest.version, root, signer_id)
    return manifest, signer_id

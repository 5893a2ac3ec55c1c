"""Write a signed bundle: read the model files, hash those bytes, sign the manifest, write, rename into place.

Each source file is read once; the bytes that are hashed are the bytes that are written (a symlinked source is
stored as its content, in a directory and in a `.tar` alike). Everything is assembled in a temporary sibling
directory (or file, for `.tar`) and renamed at the end, so a crash leaves either no bundle or a complete one, never
half of one.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.bundle.errors import BundleError, GoldenError, ManifestError
from edge_agent.bundle.golden import GoldenFiles
from edge_agent.bundle.manifest import (
    COUNTING_SCHEMA_VERSION,
    GOLDEN_NAME,
    GOLDEN_SCHEMA_VERSION,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    BundleFile,
    Counting,
    GoldenSet,
    InputSpec,
    Manifest,
    OutputSpec,
    TrainingInfo,
    Variant,
)
from edge_agent.bundle.signing import key_id, sign
from edge_agent.durable import fsync_tree

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VariantSource:
    """A model file to put in a bundle, with the metrics measured on it (None: not measured)."""

    path: Path
    f2: float | None = None
    map50: float | None = None
    latency_ms: float | None = None
    score_threshold: float | None = None  # this variant's own best-F2 threshold (None: the bundle's default)
    counting: Counting | None = None  # the settings its unique count was calibrated at (None: agent defaults)


def write_bundle(
    dest: str | os.PathLike,
    *,
    name: str,
    version: int,
    classes: Sequence[str],
    input_spec: InputSpec,
    variants: Mapping[str, VariantSource],
    score_threshold: float | None,
    training: TrainingInfo,
    private_key: Ed25519PrivateKey,
    parent_version: int | None = None,
    default_variant: str | None = None,
    outputs: OutputSpec | None = None,
    created_at: datetime | None = None,
    overwrite: bool = False,
    golden: GoldenFiles | None = None,
) -> Manifest:
    """Write a signed bundle to ``dest`` (a directory, or a `.tar` file when ``dest`` ends in `.tar`).

    Each variant's file is stored as ``<variant><suffix>`` (e.g. ``int8.onnx``). ``default_variant`` defaults to
    ``int8`` when present, else the first variant. ``score_threshold`` is the manifest's top-level threshold; None
    takes the default variant's own. ``golden`` (`edge_agent.bundle.golden`) is stored as `golden.json` plus its
    images and named in the manifest's signed `golden` set; its frames and per-variant thresholds must agree with
    the bundle (`GoldenError` otherwise). Returns the manifest that was signed.
    """
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise BundleError(f"{dest} already exists; pass overwrite=True (--force) to replace it")
    if not variants:
        raise BundleError("a bundle needs at least one variant")
    for variant, source in variants.items():
        if not Path(source.path).is_file():
            raise BundleError(f"variant {variant!r}: model file {source.path} does not exist")
    if default_variant is None:
        default_variant = "int8" if "int8" in variants else next(iter(variants))
    if score_threshold is None:
        default_source = variants.get(default_variant)
        score_threshold = default_source.score_threshold if default_source is not None else None
        if score_threshold is None:
            raise BundleError(f"no score_threshold given and the default variant {default_variant!r} has none")
    contents = {variant: Path(source.path).read_bytes() for variant, source in variants.items()}
    try:
        entries = {
            variant: Variant(
                file=f"{variant}{Path(source.path).suffix}",
                sha256=hashlib.sha256(contents[variant]).hexdigest(),
                size=len(contents[variant]),
                f2=source.f2,
                map50=source.map50,
                latency_ms=source.latency_ms,
                score_threshold=source.score_threshold,
                counting=source.counting,
            )
            for variant, source in variants.items()
        }
    except ValueError as exc:
        raise ManifestError(f"cannot build the manifest: {exc}") from exc
    try:
        manifest = Manifest(
            schema_version=COUNTING_SCHEMA_VERSION
            if any(source.counting is not None for source in variants.values())
            else GOLDEN_SCHEMA_VERSION,  # the lowest schema that carries the content: older agents still read it
            name=name,
            version=version,
            created_at=created_at or datetime.now(timezone.utc),
            parent_version=parent_version,
            classes=tuple(classes),
            input=input_spec,
            outputs=outputs or OutputSpec(),
            score_threshold=score_threshold,
            default_variant=default_variant,
            variants=entries,
            training=training,
            golden=golden_set(golden) if golden is not None else None,
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ManifestError(f"cannot build the manifest: {exc}") from exc
    payload = {entries[v].file: contents[v] for v in variants}
    if golden is not None:
        check_golden_agrees(manifest, golden)
        payload.update({GOLDEN_NAME: golden.expectations, **golden.frames})
    manifest_bytes = manifest.to_json_bytes()
    signature = sign(private_key, manifest_bytes)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.suffix == ".tar":
        _write_tar(dest, manifest_bytes, signature, payload)
    else:
        _write_dir(dest, manifest_bytes, signature, payload)
    logger.info(
        "wrote bundle %s: %s v%d, variants %s, signed by key %s",
        dest,
        name,
        version,
        ", ".join(entries),
        key_id(private_key.public_key()),
    )
    return manifest


def golden_set(golden: GoldenFiles) -> GoldenSet:
    """The manifest's `golden` entry for these files: name, sha256 and size of the very bytes that get written."""

    def entry(file: str, data: bytes) -> BundleFile:
        return BundleFile(file=file, sha256=hashlib.sha256(data).hexdigest(), size=len(data))

    return GoldenSet(
        expectations=entry(GOLDEN_NAME, golden.expectations),
        frames=tuple(entry(file, data) for file, data in golden.frames.items()),
    )


def check_golden_agrees(manifest: Manifest, golden: GoldenFiles) -> None:
    """`GoldenError` unless golden.json names exactly ``golden``'s frames and records, for each of the bundle's
    variants, that variant's own threshold: a set the device would refuse is never signed."""
    spec = golden.parsed()
    if list(spec.frames) != list(golden.frames):
        raise GoldenError(f"{GOLDEN_NAME} names the frames {list(spec.frames)}, given {list(golden.frames)}")
    if set(spec.variants) != set(manifest.variants):
        raise GoldenError(
            f"{GOLDEN_NAME} has expectations for {sorted(spec.variants)}; the bundle's variants are "
            f"{sorted(manifest.variants)}"
        )
    for name, expected in spec.variants.items():
        if abs(expected.score_threshold - manifest.threshold_for(name)) > 1e-9:
            raise GoldenError(
                f"{GOLDEN_NAME} records threshold {expected.score_threshold} for variant {name!r}; "
                f"the manifest says {manifest.threshold_for(name)}"
            )


def _write_dir(dest: Path, manifest_bytes: bytes, signature: bytes, payload: Mapping[str, bytes]) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for file_name, data in payload.items():
            (staging / file_name).write_bytes(data)
        (staging / SIGNATURE_NAME).write_bytes(signature)
        # The manifest goes last: a staging dir with a manifest has everything the manifest names.
        (staging / MANIFEST_NAME).write_bytes(manifest_bytes)
        fsync_tree(staging)
        if dest.exists():
            # Directories cannot be swapped atomically in one rename: move the old one aside first, so a crash
            # between the two renames leaves the old bundle recoverable under its backup name, never a mix.
            backup = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(dest, backup)
            os.replace(staging, dest)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_tar(dest: Path, manifest_bytes: bytes, signature: bytes, payload: Mapping[str, bytes]) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            with tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as tar:
                _add_bytes(tar, MANIFEST_NAME, manifest_bytes)
                _add_bytes(tar, SIGNATURE_NAME, signature)
                for file_name, data in payload.items():
                    # Regular-file members built from the bytes that were hashed: never a link to the source.
                    _add_bytes(tar, file_name, data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))

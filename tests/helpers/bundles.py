"""Bundle fixtures shared by the export, edge-agent and benchmark tests.

* ``bundle_keys`` (session): a throwaway ed25519 key pair ``BundleKeys(private, public)``.
* ``tiny_bundle`` (session): ``TinyBundle(path, public_key)`` — a signed bundle directory holding an untrained tiny
  Faster R-CNN (input 224x128) exported to ONNX per the contract, variant ``fp32``. Treat it as read-only; copy it
  (``shutil.copytree``) or ``rebundle`` it before changing anything.
* ``tar_bundle(source, dest)``, ``signed_announcement(tar, url, release_key, version)``: what a release stores and
  announces.
* ``rebundle(source, dest, private_key, golden=None, **changes)``: write a new signed bundle with the files of
  ``source`` and manifest fields changed (e.g. ``version=2, parent_version=1``), to test updates and rollbacks;
  ``golden`` (from ``record_golden_for``) ships signed golden frames.
* ``record_golden_for(source, score_threshold=..., edit=...)``: golden frames recorded from ``source``'s own model
  files with onnxruntime CPU, as export records them; ``edit`` makes a set that does not match.
* ``golden_bundle(source, dest, private_key, edit=None, **changes)``: ``rebundle`` with such golden frames at
  ``GOLDEN_THRESHOLD``; ``edit=shift_boxes`` gives a validly signed bundle whose golden frames do not match.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from edge_agent.bundle import (
    GOLDEN_NAME,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    GoldenFiles,
    generate_keypair,
    load_private_key,
    parse_manifest,
)
from edge_agent.bundle.manifest import GOLDEN_SCHEMA_VERSION


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


def rebundle(source: Path, dest: Path, private_key: Path, *, golden: GoldenFiles | None = None, **changes: Any) -> Path:
    """Copy ``source``'s files into a new bundle at ``dest`` with manifest fields replaced by ``changes``, signed
    with ``private_key`` (the source's signature is not checked: this is a test helper). ``golden`` replaces the
    golden frames (named in the signed manifest, schema 3)."""
    from edge_agent.bundle.signing import sign
    from edge_agent.bundle.writer import golden_set

    manifest = parse_manifest((source / MANIFEST_NAME).read_bytes())
    data = manifest.model_dump(mode="json")
    data.update(json.loads(json.dumps(changes, default=str)))
    if golden is not None:
        # Golden frames need schema 3 (not the newest: a schema-4 bundle asks for a newer agent when released).
        data.update(
            schema_version=max(data["schema_version"], GOLDEN_SCHEMA_VERSION),
            golden=golden_set(golden).model_dump(mode="json"),
        )
    new = type(manifest).model_validate(data)
    dest.mkdir(parents=True)
    for _, entry in new.files():  # model variants and golden frames
        if golden is None or entry.file not in {GOLDEN_NAME, *golden.frames}:
            (dest / entry.file).write_bytes((source / entry.file).read_bytes())
    if golden is not None:
        (dest / GOLDEN_NAME).write_bytes(golden.expectations)
        for file, png in golden.frames.items():
            (dest / file).write_bytes(png)
    raw = new.to_json_bytes()
    (dest / MANIFEST_NAME).write_bytes(raw)
    (dest / SIGNATURE_NAME).write_bytes(sign(load_private_key(private_key), raw))
    return dest


def record_golden_for(
    source: Path,
    *,
    frames: int = 3,
    seed: int = 0,
    score_threshold: float | None = None,
    edit: Any = None,
    images: Any = None,
) -> GoldenFiles:
    """Golden frames for ``source``'s variants, recorded as export does (`export.golden`: onnxruntime CPU on
    ``images`` (BGR frames; default: ``frames`` smooth random ones), at ``score_threshold`` (None: the manifest's
    thresholds). ``edit(golden_json_dict)`` may change golden.json before it is returned, to make a set that does
    not match the model."""
    from edge_agent.bundle import VariantSource
    from export.golden import encode_frames, random_frames, record_golden

    manifest = parse_manifest((source / MANIFEST_NAME).read_bytes())
    width, height = manifest.input.width, manifest.input.height
    variants = {
        name: VariantSource(
            source / v.file, score_threshold=score_threshold if score_threshold is not None else v.score_threshold
        )
        for name, v in manifest.variants.items()
    }
    default = score_threshold if score_threshold is not None else manifest.score_threshold
    if images is None:
        images = random_frames(width, height, frames, seed)
    png = encode_frames(images, width, height)
    files = record_golden(png, variants, default, width, height)
    if edit is None:
        return files
    spec = json.loads(files.expectations)
    edit(spec)
    return GoldenFiles((json.dumps(spec, sort_keys=True) + "\n").encode(), files.frames)


# The tiny untrained model scores its boxes about 0.53: at threshold 0.4 (band 0.1) they are all confident, so its
# golden frames have something to compare.
GOLDEN_THRESHOLD = 0.4


def golden_bundle(source: Path, dest: Path, private_key: Path, edit: Any = None, **changes: Any) -> Path:
    """``rebundle`` with golden frames recorded from ``source``'s model at `GOLDEN_THRESHOLD` (the new manifest's
    threshold too); ``edit`` (e.g. `shift_boxes`) makes them not match the model: a validly signed wrong set."""
    golden = record_golden_for(source, score_threshold=GOLDEN_THRESHOLD, edit=edit)
    return rebundle(source, dest, private_key, golden=golden, score_threshold=GOLDEN_THRESHOLD, **changes)


def shift_boxes(spec: dict[str, Any]) -> None:
    """Golden expectations of another model: every recorded box moved by its own width (IoU 0 with the real one)."""
    for expected in spec["variants"].values():
        for frame in expected["detections"]:
            for d in frame:
                width = d["box"][2] - d["box"][0]
                d["box"] = [d["box"][0] + width, d["box"][1], d["box"][2] + width, d["box"][3]]


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

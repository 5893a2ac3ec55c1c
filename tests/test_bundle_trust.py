"""Bundle trust under attack: what runs is what was verified, hostile manifests fail with one clear line, tar
bundles leave nothing behind, symlinks never leak in or out, each variant runs at its own threshold."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_agent.bundle import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    SIGNATURE_NAME,
    BundleError,
    HashMismatchError,
    InputSpec,
    ManifestError,
    TrainingInfo,
    VariantSource,
    load_bundle,
    load_private_key,
    parse_manifest,
    verify_bundle,
    write_bundle,
)
from edge_agent.bundle.cli import app as bundle_app
from edge_agent.bundle.signing import sign
from edge_agent.detectors import DetectorOptions, create_detector
from tests.helpers.agent import REPO_ROOT, agent_config, write_config
from tests.helpers.bundles import BundleKeys, rebundle

TRAINING = TrainingInfo(config_digest=None, data_fingerprint=None, checkpoint_sha256=None)
CPU = DetectorOptions(threads=1, extra={"providers": ["CPUExecutionProvider"]})


def _byte_bundle(dest: Path, keys: BundleKeys, tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "a.onnx").write_bytes(b"fp32 model bytes " * 50)
    write_bundle(
        dest,
        name="starfish-cots",
        version=3,
        classes=("background", "cots"),
        input_spec=InputSpec.for_size(64, 32),
        variants={"fp32": VariantSource(src / "a.onnx")},
        score_threshold=0.4,
        training=TRAINING,
        private_key=load_private_key(keys.private),
    )
    return dest


def _sign_raw(bundle: Path, keys: BundleKeys, raw: bytes) -> None:
    (bundle / MANIFEST_NAME).write_bytes(raw)
    (bundle / SIGNATURE_NAME).write_bytes(sign(load_private_key(keys.private), raw))


def _verify_cli(bundle: Path, key: Path) -> tuple[int, str]:
    result = CliRunner().invoke(bundle_app, ["verify", str(bundle), "--key", str(key)])
    return result.exit_code, result.output


# -- hostile but validly signed manifests -------------------------------------------------------------------------
def test_deeply_nested_signed_manifest_is_a_clear_refusal(tmp_path: Path, bundle_keys: BundleKeys) -> None:
    bundle = _byte_bundle(tmp_path / "b", bundle_keys, tmp_path)
    depth = 100_000
    _sign_raw(bundle, bundle_keys, b'{"x": ' * depth + b"1" + b"}" * depth)
    with pytest.raises(ManifestError, match="nested too deeply"):
        verify_bundle(bundle, bundle_keys.public)
    code, output = _verify_cli(bundle, bundle_keys.public)
    assert code == 2 and "nested too deeply" in output
    assert len(output.strip().splitlines()) == 1 and "Traceback" not in output


def test_duplicate_version_key_is_refused(tmp_path: Path, bundle_keys: BundleKeys) -> None:
    bundle = _byte_bundle(tmp_path / "b", bundle_keys, tmp_path)
    raw = (bundle / MANIFEST_NAME).read_bytes()
    assert b'"version": 3' in raw
    # A second `version` later in the object: json.loads alone would silently take 99.
    _sign_raw(bundle, bundle_keys, raw.replace(b'"version": 3', b'"version": 3,\n  "version": 99', 1))
    with pytest.raises(ManifestError, match="repeats the key 'version'"):
        verify_bundle(bundle, bundle_keys.public)
    code, output = _verify_cli(bundle, bundle_keys.public)
    assert code == 2 and "repeats the key 'version'" in output
    with pytest.raises(ManifestError, match="repeats the key 'f2'"):  # nested objects too
        parse_manifest(raw.replace(b'"f2": null', b'"f2": null, "f2": 0.9', 1))


def test_oversized_manifest_is_refused_before_it_is_read_whole(tmp_path: Path, bundle_keys: BundleKeys) -> None:
    bundle = _byte_bundle(tmp_path / "b", bundle_keys, tmp_path)
    raw = (bundle / MANIFEST_NAME).read_bytes()
    padded = raw.rstrip()[:-1] + b', "pad": "' + b"x" * MAX_MANIFEST_BYTES + b'"}\n'
    _sign_raw(bundle, bundle_keys, padded)
    with pytest.raises(ManifestError, match=f"more than the {MAX_MANIFEST_BYTES} bytes"):
        verify_bundle(bundle, bundle_keys.public)
    with pytest.raises(ManifestError, match="allowed"):
        parse_manifest(padded)
    assert _verify_cli(bundle, bundle_keys.public)[0] == 2


def test_model_file_symlinked_out_of_the_bundle_is_refused(tmp_path: Path, bundle_keys: BundleKeys) -> None:
    bundle = _byte_bundle(tmp_path / "b", bundle_keys, tmp_path)
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(bundle / "fp32.onnx", outside)  # same bytes, so only the location is wrong
    (bundle / "fp32.onnx").symlink_to(outside)
    with pytest.raises(BundleError, match="outside the bundle"):
        verify_bundle(bundle, bundle_keys.public)
    code, output = _verify_cli(bundle, bundle_keys.public)
    assert code == 2 and "outside the bundle" in output and len(output.strip().splitlines()) == 1
    # The manifest itself may not live outside either (its bytes are what the signature covers).
    (bundle / "fp32.onnx").unlink()
    shutil.move(outside, bundle / "fp32.onnx")
    shutil.move(bundle / MANIFEST_NAME, tmp_path / "manifest-elsewhere.json")
    (bundle / MANIFEST_NAME).symlink_to(tmp_path / "manifest-elsewhere.json")
    with pytest.raises(BundleError, match="outside the bundle"):
        verify_bundle(bundle, bundle_keys.public)


def test_a_model_file_that_grew_is_not_read_past_its_signed_size(tmp_path: Path, bundle_keys: BundleKeys) -> None:
    bundle = _byte_bundle(tmp_path / "b", bundle_keys, tmp_path)
    with open(bundle / "fp32.onnx", "ab") as handle:
        handle.write(b"\0" * (8 << 20))
    with pytest.raises(HashMismatchError, match="more than the 850 bytes"):
        verify_bundle(bundle, bundle_keys.public)


# -- what runs is what was verified --------------------------------------------------------------------------------
def _other_model(tiny: Path, tmp_path: Path) -> bytes:
    """A different, perfectly loadable ONNX model of the same contract (the fp32 model, INT8-quantized)."""
    from export.quantize import quantize_int8, random_calibration_frames

    manifest = parse_manifest((tiny / MANIFEST_NAME).read_bytes())
    frames = random_calibration_frames(manifest.input.width, manifest.input.height, count=2)
    return quantize_int8(tiny / "fp32.onnx", tmp_path / "swapped.onnx", frames).read_bytes()


def test_model_swapped_after_verification_is_refused_not_loaded(tmp_path: Path, tiny_bundle) -> None:
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.path, bundle_dir)
    verified = load_bundle(bundle_dir, tiny_bundle.public_key)
    original = (bundle_dir / "fp32.onnx").read_bytes()
    (bundle_dir / "fp32.onnx").write_bytes(_other_model(bundle_dir, tmp_path))  # between verify and load
    with pytest.raises(HashMismatchError, match="changed since the bundle was verified"):
        create_detector(["onnxruntime"], verified, None, CPU)
    # Swapped back, it loads; swapping it again once the session exists cannot change what runs.
    (bundle_dir / "fp32.onnx").write_bytes(original)
    detector = create_detector(["onnxruntime"], verified, None, DetectorOptions(score_threshold=0.0, threads=1))
    frame = np.random.default_rng(0).integers(0, 255, (192, 320, 3), dtype=np.uint8)
    before = detector.detect(frame)
    (bundle_dir / "fp32.onnx").write_bytes(_other_model(bundle_dir, tmp_path))
    after = detector.detect(frame)
    np.testing.assert_array_equal(before.scores, after.scores)
    np.testing.assert_array_equal(before.boxes, after.boxes)


def test_bundle_path_is_resolved_once(tmp_path: Path, tiny_bundle, bundle_keys: BundleKeys) -> None:
    """A `current -> vN` link flipped while the agent starts cannot mix two bundles."""
    v1 = tmp_path / "v1"
    shutil.copytree(tiny_bundle.path, v1)
    shutil.copytree(v1, tmp_path / "v2-source")
    other = _other_model(v1, tmp_path)
    (tmp_path / "v2-source" / "fp32.onnx").write_bytes(other)
    v2 = tmp_path / "v2"
    rebundle(
        tmp_path / "v2-source",
        v2,
        bundle_keys.private,
        version=2,
        variants={
            "fp32": {
                "file": "fp32.onnx",
                "sha256": hashlib.sha256(other).hexdigest(),
                "size": len(other),
                "f2": None,
                "map50": None,
                "latency_ms": None,
            }
        },
    )
    current = tmp_path / "current"
    current.symlink_to(v1)
    verified = load_bundle(current, bundle_keys.public)
    assert verified.root == v1.resolve()
    current.unlink()
    current.symlink_to(v2)
    assert verified.read_variant() == (v1 / "fp32.onnx").read_bytes()


# -- tar bundles ---------------------------------------------------------------------------------------------------
def _tar_of(bundle: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w") as tar:
        for path in sorted(bundle.iterdir()):
            tar.add(path, arcname=path.name)
    return dest


def test_tar_bundle_runs_and_leaves_no_temporary_directory(tmp_path: Path, tiny_bundle, monkeypatch) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    archive = _tar_of(tiny_bundle.path, tmp_path / "bundle.tar")
    verified = load_bundle(archive, tiny_bundle.public_key)
    assert verified.is_tar and verified.root == archive.resolve()
    detector = create_detector(["onnxruntime"], verified, None, CPU)
    assert len(detector.detect(np.zeros((192, 320, 3), np.uint8)).boxes.shape) == 2
    detector.close()
    assert verify_bundle(archive, tiny_bundle.public_key).version == verified.manifest.version
    assert list(scratch.iterdir()) == []  # nothing unpacked, nothing left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle.tar", "tmp"]
    with pytest.raises(BundleError, match="read in place"):
        verified.variant_path()


def test_tar_with_a_member_twice_is_refused(tmp_path: Path, bundle_keys: BundleKeys) -> None:
    bundle = _byte_bundle(tmp_path / "b", bundle_keys, tmp_path)
    archive = _tar_of(bundle, tmp_path / "b.tar")
    with tarfile.open(archive, "a") as tar:
        tar.add(bundle / "fp32.onnx", arcname="fp32.onnx")
    with pytest.raises(BundleError, match="more than once"):
        verify_bundle(archive, bundle_keys.public)


def test_tar_writer_stores_symlinked_sources_as_files(tmp_path: Path, bundle_keys: BundleKeys) -> None:
    real = tmp_path / "real.onnx"
    real.write_bytes(b"model bytes " * 30)
    link = tmp_path / "link.onnx"
    link.symlink_to(real)
    archive = tmp_path / "b.tar"
    write_bundle(
        archive,
        name="starfish-cots",
        version=1,
        classes=("background", "cots"),
        input_spec=InputSpec.for_size(64, 32),
        variants={"fp32": VariantSource(link)},
        score_threshold=0.5,
        training=TRAINING,
        private_key=load_private_key(bundle_keys.private),
    )
    with tarfile.open(archive) as tar:
        member = tar.getmember("fp32.onnx")
        assert member.isfile() and not member.issym()
        assert tar.extractfile(member).read() == real.read_bytes()
    assert load_bundle(archive, bundle_keys.public).read_variant() == real.read_bytes()


# -- one threshold per variant -------------------------------------------------------------------------------------
def test_each_variant_runs_at_its_own_best_f2_threshold(tmp_path: Path, tiny_bundle, bundle_keys) -> None:
    fp32 = tiny_bundle.path / "fp32.onnx"
    dest = tmp_path / "bundle"
    manifest = write_bundle(
        dest,
        name="starfish-cots",
        version=1,
        classes=("background", "cots"),
        input_spec=parse_manifest((tiny_bundle.path / MANIFEST_NAME).read_bytes()).input,
        variants={
            "fp32": VariantSource(fp32, score_threshold=0.31),
            "int8": VariantSource(fp32, score_threshold=0.77),
            "other": VariantSource(fp32),
        },
        score_threshold=None,
        training=TRAINING,
        private_key=load_private_key(bundle_keys.private),
    )
    assert manifest.score_threshold == 0.77  # None: the default (int8) variant's own
    raw = json.loads((dest / MANIFEST_NAME).read_text())
    assert raw["variants"]["fp32"]["score_threshold"] == 0.31 and raw["variants"]["other"]["score_threshold"] is None
    verified = load_bundle(dest, bundle_keys.public)
    chosen = {v: create_detector(["onnxruntime"], verified, v, CPU).score_threshold for v in ("fp32", "int8", "other")}
    assert chosen == {"fp32": 0.31, "int8": 0.77, "other": 0.77}
    forced = create_detector(["onnxruntime"], verified, "fp32", DetectorOptions(score_threshold=0.5, threads=1))
    assert forced.score_threshold == 0.5  # a configured threshold still wins


def test_demo_bundle_still_verifies() -> None:
    code, output = _verify_cli(REPO_ROOT / "models/demo/bundle", REPO_ROOT / "models/demo/demo_key.pub")
    assert code == 0 and "OK: starfish-cots" in output


# -- the agent's start-up refuses hostile bundles with exit 2 and one line ------------------------------------------
def test_agent_run_refuses_a_hostile_bundle_with_exit_2_and_one_line(tmp_path: Path, bundle_keys) -> None:
    bundle = _byte_bundle(tmp_path / "b", bundle_keys, tmp_path)
    raw = (bundle / MANIFEST_NAME).read_bytes()
    _sign_raw(bundle, bundle_keys, raw.replace(b'"version": 3', b'"version": 3,\n  "version": 99', 1))

    class _Bundle:
        path = bundle
        public_key = bundle_keys.public

    config = write_config(tmp_path / "agent.yaml", agent_config(tmp_path, _Bundle, "clip.mp4", 1))
    proc = subprocess.run(
        [sys.executable, "-m", "starfish_cli", "agent", "run", "--config", str(config), "--no-console"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "60"},
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "cannot start" in line]
    assert len(lines) == 1 and "repeats the key 'version'" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_truncated_tar_is_a_refusal_not_a_traceback(tmp_path: Path, bundle_keys: BundleKeys) -> None:
    bundle = _byte_bundle(tmp_path / "b", bundle_keys, tmp_path)
    archive = _tar_of(bundle, tmp_path / "b.tar")
    data = archive.read_bytes()
    cut = data.index(b"fp32 model bytes") + 100  # inside the model member
    archive.write_bytes(data[:cut])
    with pytest.raises(BundleError):
        verify_bundle(archive, bundle_keys.public)
    assert _verify_cli(archive, bundle_keys.public)[0] == 2

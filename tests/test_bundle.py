"""Bundle format: write -> verify -> load round trips, and every kind of tampering is refused with its own error."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_agent.bundle import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    SIGNATURE_NAME,
    BundleError,
    GoldenError,
    GoldenFiles,
    HashMismatchError,
    InputSpec,
    ManifestError,
    SignatureError,
    TrainingInfo,
    UnsupportedSchemaError,
    VariantSource,
    VersionError,
    generate_keypair,
    load_bundle,
    load_private_key,
    parse_manifest,
    verify_bundle,
    write_bundle,
)
from edge_agent.bundle.golden import GoldenDetection, golden_files
from edge_agent.bundle.signing import sign
from edge_agent.bundle.writer import golden_set
from tests.helpers.bundles import BundleKeys

TRAINING = TrainingInfo(config_digest="c" * 64, data_fingerprint="d" * 16, checkpoint_sha256="e" * 64)


def _write(dest: Path, keys: BundleKeys, tmp_path: Path, **overrides) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "a.onnx").write_bytes(b"fp32 model bytes " * 50)
    (src / "b.onnx").write_bytes(b"int8 model bytes " * 20)
    kwargs = dict(
        name="starfish-cots",
        version=3,
        parent_version=2,
        classes=("background", "cots"),
        input_spec=InputSpec.for_size(640, 384),
        variants={
            "fp32": VariantSource(src / "a.onnx", f2=0.61, map50=0.55, latency_ms=120.0),
            "int8": VariantSource(src / "b.onnx", f2=0.6, map50=0.54, latency_ms=40.0),
        },
        score_threshold=0.4,
        training=TRAINING,
        private_key=load_private_key(keys.private),
    )
    kwargs.update(overrides)
    write_bundle(dest, **kwargs)
    return dest


def _resign(bundle: Path, keys: BundleKeys, data: dict) -> None:
    raw = (json.dumps(data, indent=2) + "\n").encode()
    (bundle / MANIFEST_NAME).write_bytes(raw)
    (bundle / SIGNATURE_NAME).write_bytes(sign(load_private_key(keys.private), raw))


@pytest.fixture
def bundle(tmp_path: Path, bundle_keys: BundleKeys) -> Path:
    return _write(tmp_path / "bundle", bundle_keys, tmp_path)


@pytest.fixture
def other_keys(tmp_path: Path) -> BundleKeys:
    keys = BundleKeys(tmp_path / "other.pem", tmp_path / "other.pub")
    generate_keypair(keys.private, keys.public)
    return keys


def test_round_trip_directory(bundle: Path, bundle_keys: BundleKeys) -> None:
    manifest = verify_bundle(bundle, [bundle_keys.public])
    # No counting settings: stamped with schema 3, the lowest that carries it, so agents before schema 4 read it.
    assert manifest.schema_version == 3 < SCHEMA_VERSION and manifest.min_agent_version() == "0"
    assert (manifest.name, manifest.version, manifest.parent_version) == ("starfish-cots", 3, 2)
    assert manifest.default_variant == "int8"
    assert manifest.input.shape == (1, 3, 384, 640) and manifest.input.colour_order == "RGB"
    assert manifest.variants["fp32"].f2 == pytest.approx(0.61)
    assert manifest.created_at.utcoffset().total_seconds() == 0
    loaded = load_bundle(bundle, bundle_keys.public)
    assert loaded.variant_path() == (bundle / "int8.onnx").resolve()
    assert loaded.variant_path("fp32").read_bytes() == b"fp32 model bytes " * 50
    with pytest.raises(BundleError, match="no variant 'fp16'"):
        loaded.variant_path("fp16")
    assert sorted(p.name for p in bundle.iterdir()) == ["fp32.onnx", "int8.onnx", MANIFEST_NAME, SIGNATURE_NAME]
    # no staging directory left behind
    assert sorted(p.name for p in bundle.parent.iterdir()) == ["bundle", "src"]


def test_round_trip_tar(tmp_path: Path, bundle_keys: BundleKeys) -> None:
    tar_path = _write(tmp_path / "bundle.tar", bundle_keys, tmp_path)
    assert tarfile.is_tarfile(tar_path)
    assert verify_bundle(tar_path, bundle_keys.public).version == 3
    loaded = load_bundle(tar_path, bundle_keys.public, unpack_to=tmp_path / "unpacked")
    assert loaded.root == (tmp_path / "unpacked").resolve()
    assert loaded.variant_path("int8").read_bytes() == b"int8 model bytes " * 20


def test_refuses_to_overwrite_and_overwrites_when_asked(bundle: Path, bundle_keys: BundleKeys, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="already exists"):
        _write(bundle, bundle_keys, tmp_path)
    _write(bundle, bundle_keys, tmp_path, version=4, parent_version=3, overwrite=True)
    assert verify_bundle(bundle, bundle_keys.public).version == 4


def test_crash_while_writing_leaves_nothing(tmp_path: Path, bundle_keys: BundleKeys, monkeypatch) -> None:
    def failing_fsync(root: Path) -> None:
        assert (root / MANIFEST_NAME).is_file()  # everything was written into the staging directory...
        raise OSError("disk full (simulated)")  # ... and then the disk failed before the rename

    monkeypatch.setattr("edge_agent.bundle.writer.fsync_tree", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        _write(tmp_path / "bundle", bundle_keys, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.parametrize("file_name", [MANIFEST_NAME, SIGNATURE_NAME, "fp32.onnx", "int8.onnx"])
def test_flipped_byte_in_any_file_is_refused(bundle: Path, bundle_keys: BundleKeys, file_name: str) -> None:
    path = bundle / file_name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    expected = HashMismatchError if file_name.endswith(".onnx") else SignatureError
    with pytest.raises(expected):
        verify_bundle(bundle, bundle_keys.public)


def test_edited_manifest_is_refused(bundle: Path, bundle_keys: BundleKeys) -> None:
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    data["score_threshold"] = 0.01
    (bundle / MANIFEST_NAME).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    with pytest.raises(SignatureError, match="does not verify"):
        verify_bundle(bundle, bundle_keys.public)


def test_swapped_signature_is_refused(bundle: Path, bundle_keys: BundleKeys, tmp_path: Path) -> None:
    other = _write(tmp_path / "other", bundle_keys, tmp_path, version=9, parent_version=None)
    shutil.copyfile(other / SIGNATURE_NAME, bundle / SIGNATURE_NAME)
    with pytest.raises(SignatureError):
        verify_bundle(bundle, bundle_keys.public)


def test_wrong_key_missing_signature_and_no_keys(bundle: Path, other_keys: BundleKeys, bundle_keys) -> None:
    with pytest.raises(SignatureError, match="any of the 1 trusted key"):
        verify_bundle(bundle, other_keys.public)
    # any one trusted key that verifies is enough
    assert load_bundle(bundle, [other_keys.public, bundle_keys.public]).manifest.version == 3
    with pytest.raises(SignatureError, match="no trusted public keys"):
        verify_bundle(bundle, [])
    (bundle / SIGNATURE_NAME).unlink()
    with pytest.raises(SignatureError, match="unsigned"):
        verify_bundle(bundle, bundle_keys.public)


def test_truncated_signature_is_refused(bundle: Path, bundle_keys: BundleKeys) -> None:
    (bundle / SIGNATURE_NAME).write_bytes((bundle / SIGNATURE_NAME).read_bytes()[:40])
    with pytest.raises(SignatureError, match="64 bytes"):
        verify_bundle(bundle, bundle_keys.public)


@pytest.mark.parametrize("field", ["created_at", "classes", "score_threshold", "training", "variants", "input"])
def test_missing_field_is_refused_even_when_signed(bundle: Path, bundle_keys: BundleKeys, field: str) -> None:
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    del data[field]
    _resign(bundle, bundle_keys, data)
    with pytest.raises(ManifestError, match=rf"{field}: Field required"):
        verify_bundle(bundle, bundle_keys.public)


def test_unknown_field_and_bad_values_are_refused(bundle: Path, bundle_keys: BundleKeys) -> None:
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    data["variants"]["int8"]["fiel"] = "typo"
    _resign(bundle, bundle_keys, data)
    with pytest.raises(ManifestError, match="variants.int8.fiel: Extra inputs are not permitted"):
        verify_bundle(bundle, bundle_keys.public)
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    del data["variants"]["int8"]["fiel"]
    data["variants"]["int8"]["file"] = "../../etc/passwd"
    _resign(bundle, bundle_keys, data)
    with pytest.raises(ManifestError, match="plain file name"):
        verify_bundle(bundle, bundle_keys.public)


def test_newer_schema_is_refused(bundle: Path, bundle_keys: BundleKeys) -> None:
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    data["schema_version"] = SCHEMA_VERSION + 1
    data["some_future_field"] = True
    _resign(bundle, bundle_keys, data)
    with pytest.raises(UnsupportedSchemaError, match=f"schema_version {SCHEMA_VERSION + 1}"):
        verify_bundle(bundle, bundle_keys.public)


def test_missing_model_file_is_refused(bundle: Path, bundle_keys: BundleKeys) -> None:
    (bundle / "fp32.onnx").unlink()
    with pytest.raises(HashMismatchError, match="fp32.onnx .*missing"):
        verify_bundle(bundle, bundle_keys.public)


def test_version_and_name_checks(bundle: Path, bundle_keys: BundleKeys) -> None:
    assert verify_bundle(bundle, bundle_keys.public, running_version=2).version == 3
    with pytest.raises(VersionError, match="not newer than the running v3"):
        verify_bundle(bundle, bundle_keys.public, running_version=3)
    assert verify_bundle(bundle, bundle_keys.public, running_version=5, allow_rollback=True).version == 3
    with pytest.raises(ManifestError, match="expected 'other'"):
        verify_bundle(bundle, bundle_keys.public, expected_name="other")


def test_tar_with_path_traversal_is_refused(tmp_path: Path, bundle_keys: BundleKeys) -> None:
    evil = tmp_path / "evil.tar"
    payload = tmp_path / "payload"
    payload.write_bytes(b"x")
    with tarfile.open(evil, "w") as tar:
        tar.add(payload, arcname="../escaped")
    with pytest.raises(BundleError, match="not a plain file"):
        load_bundle(evil, bundle_keys.public, unpack_to=tmp_path / "out")
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "out").exists()


def test_cli_verify_info_and_keys(bundle: Path, bundle_keys: BundleKeys, other_keys, tmp_path: Path) -> None:
    from edge_agent.bundle.cli import app as bundle_app
    from export.keys_cli import app as keys_app

    runner = CliRunner()
    ok = runner.invoke(bundle_app, ["verify", str(bundle), "--key", str(bundle_keys.public)])
    assert ok.exit_code == 0, ok.output
    assert "OK: starfish-cots v3" in ok.output
    bad = runner.invoke(bundle_app, ["verify", str(bundle), "--key", str(other_keys.public)])
    assert bad.exit_code == 2 and "SignatureError" in bad.output
    info = runner.invoke(bundle_app, ["info", str(bundle), "--json"])
    assert info.exit_code == 0 and json.loads(info.output)["version"] == 3
    new = runner.invoke(keys_app, ["--private", str(tmp_path / "k" / "new.pem")])
    assert new.exit_code == 0, new.output
    assert (tmp_path / "k" / "new.pub").is_file() and (tmp_path / "k" / "new.pem").stat().st_mode & 0o077 == 0
    again = runner.invoke(keys_app, ["--private", str(tmp_path / "k" / "new.pem")])
    assert again.exit_code == 2 and "already exists" in again.output and "--force" in again.output


# -- golden frames (schema 3) -----------------------------------------------------------------------------------


def _golden(thresholds: dict[str, float] | None = None) -> GoldenFiles:
    detection = GoldenDetection(box=(1.0, 2.0, 30.0, 40.0), score=0.9, label=1)
    thresholds = thresholds or {"fp32": 0.4, "int8": 0.4}
    return golden_files(
        {"golden_0.png": b"\x89PNG frame zero", "golden_1.png": b"\x89PNG frame one"},
        {name: (t, 0.3, [[detection], []]) for name, t in thresholds.items()},
        "onnxruntime test",
    )


def test_schema_3_golden_frames_round_trip_and_are_signed(tmp_path: Path, bundle_keys: BundleKeys) -> None:
    bundle = _write(tmp_path / "bundle", bundle_keys, tmp_path, golden=_golden())
    loaded = load_bundle(bundle, bundle_keys.public)
    manifest = loaded.manifest
    assert manifest.schema_version == 3 and manifest.golden is not None
    assert [f.file for f in manifest.golden.frames] == ["golden_0.png", "golden_1.png"]
    assert manifest.golden.expectations.file == "golden.json"
    assert parse_manifest(manifest.to_json_bytes()) == manifest
    assert parse_manifest((bundle / MANIFEST_NAME).read_bytes()) == manifest
    spec, frames = loaded.read_golden()
    assert frames == [("golden_0.png", b"\x89PNG frame zero"), ("golden_1.png", b"\x89PNG frame one")]
    assert spec.variants["int8"].detections[0][0].score == pytest.approx(0.9)
    tar = _write(tmp_path / "bundle.tar", bundle_keys, tmp_path, golden=_golden())
    with tarfile.open(tar) as archive:
        assert {"golden.json", "golden_0.png", "golden_1.png"} <= set(archive.getnames())
    assert load_bundle(tar, bundle_keys.public).read_golden()[1] == frames
    from edge_agent.bundle.cli import app

    result = CliRunner().invoke(app, ["info", str(bundle)])
    assert result.exit_code == 0 and "golden frames: 2 (golden_0.png, golden_1.png)" in result.output
    result = CliRunner().invoke(app, ["verify", str(bundle), "--key", str(bundle_keys.public)])
    assert result.exit_code == 0 and "2 golden frames" in result.output


@pytest.mark.parametrize("name", ["golden.json", "golden_1.png"])
def test_a_golden_file_changed_after_signing_is_refused(tmp_path: Path, bundle_keys: BundleKeys, name: str) -> None:
    bundle = _write(tmp_path / "bundle", bundle_keys, tmp_path, golden=_golden())
    data = bytearray((bundle / name).read_bytes())
    data[-1] ^= 0x01
    (bundle / name).write_bytes(bytes(data))
    with pytest.raises(HashMismatchError, match=f"golden: sha256 of {name}"):
        load_bundle(bundle, bundle_keys.public)
    (bundle / name).unlink()
    with pytest.raises(HashMismatchError, match=f"golden: file {name} named by the manifest is missing"):
        load_bundle(bundle, bundle_keys.public)


def test_schema_2_manifests_are_still_read_and_cannot_carry_golden(bundle: Path, bundle_keys: BundleKeys) -> None:
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    assert "golden" not in data  # no golden frames: the key is left out, as in schema 1 and 2
    data["schema_version"] = 2
    _resign(bundle, bundle_keys, data)
    loaded = load_bundle(bundle, bundle_keys.public)
    assert loaded.manifest.schema_version == 2 and loaded.manifest.golden is None and loaded.read_golden() is None
    data["golden"] = json.loads(json.dumps(golden_set(_golden()).model_dump(mode="json")))
    _resign(bundle, bundle_keys, data)
    with pytest.raises(ManifestError, match="golden needs schema_version 3"):
        load_bundle(bundle, bundle_keys.public)


def test_writer_refuses_golden_frames_the_device_would_refuse(tmp_path: Path, bundle_keys: BundleKeys) -> None:
    with pytest.raises(GoldenError, match="threshold 0.5 for variant 'fp32'"):
        _write(tmp_path / "a", bundle_keys, tmp_path, golden=_golden({"fp32": 0.5, "int8": 0.4}))
    with pytest.raises(GoldenError, match="expectations for \\['fp32'\\]"):
        _write(tmp_path / "b", bundle_keys, tmp_path, golden=_golden({"fp32": 0.4}))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    huge = GoldenFiles(_golden().expectations, {"golden_0.png": b"x" * (16 << 20 | 1), "golden_1.png": b"y"})
    with pytest.raises(ManifestError, match="golden frame golden_0.png is 16777217 bytes, more than 16777216"):
        _write(tmp_path / "c", bundle_keys, tmp_path, golden=huge)

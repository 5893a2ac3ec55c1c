"""TensorRT engine building: clear errors without TensorRT, cache-key checks, and a real build where available."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest

from edge_agent.device_state import DeviceStateError, device_secret
from edge_agent.trt import (
    EngineKey,
    EngineKeyMismatch,
    EngineTampered,
    TensorRTUnavailable,
    build_engine,
    tensorrt_available,
)
from edge_agent.trt.cache import MAC_KEY_NAME, check_sidecar, engine_mac, engine_paths, read_engine, store_engine
from tests.helpers.bundles import TinyBundle
from tests.helpers.run_if import requires_cuda, requires_tensorrt

KEY = EngineKey("ab" * 32, "10.3.0", "Orin (nvgpu)", "8.7", "fp16")


@pytest.mark.skipif(tensorrt_available()[0], reason="TensorRT is installed here: the 'absent' path cannot run")
def test_without_tensorrt_the_error_says_so(tmp_path: Path) -> None:
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"whatever")
    with pytest.raises(TensorRTUnavailable, match="tensorrt Python package is not installed"):
        build_engine(onnx, tmp_path / "cache", precision="fp16")
    assert not (tmp_path / "cache").exists()


@pytest.mark.skipif(tensorrt_available()[0], reason="TensorRT is installed here: the 'absent' path cannot run")
def test_cli_without_tensorrt_exits_with_the_reason(tiny_bundle: TinyBundle) -> None:
    from typer.testing import CliRunner

    from export.cli import app

    result = CliRunner().invoke(app, ["tensorrt", str(tiny_bundle.path), "--key", str(tiny_bundle.public_key)])
    assert result.exit_code == 1 and "tensorrt Python package is not installed" in result.output


def test_engine_built_for_another_device_is_refused(tmp_path: Path) -> None:
    mac_key = device_secret(tmp_path / "state", MAC_KEY_NAME)
    store_engine(tmp_path, KEY, b"serialized engine", mac_key)
    assert read_engine(tmp_path, KEY, mac_key) == b"serialized engine"  # same key: accepted
    _, sidecar = engine_paths(tmp_path, KEY)
    for field, value in (
        ("gpu_name", "NVIDIA H100"),
        ("compute_capability", "9.0"),
        ("tensorrt_version", "8.6.2"),
        ("precision", "int8"),
        ("onnx_sha256", "cd" * 32),
    ):
        with pytest.raises(EngineKeyMismatch, match=field):
            check_sidecar(sidecar, replace(KEY, **{field: value}), b"serialized engine", mac_key)
    with pytest.raises(EngineKeyMismatch, match="corrupted"):
        check_sidecar(sidecar, KEY, b"serialized engine, then corrupted", mac_key)
    sidecar.write_text(json.dumps({"key": {"gpu_name": "x"}}))
    with pytest.raises(EngineKeyMismatch, match="unreadable"):
        read_engine(tmp_path, KEY, mac_key)
    assert read_engine(tmp_path / "empty", KEY, mac_key) is None  # nothing cached: build


def test_planted_engine_with_a_self_written_sidecar_is_refused(tmp_path: Path) -> None:
    """An attacker who can write the cache directory (not the state directory) plants an engine and writes the
    sidecar a plain sha256 check would accept: the MAC made with the device key refuses it."""
    state, cache = tmp_path / "state", tmp_path / "cache"
    mac_key = device_secret(state, MAC_KEY_NAME)
    assert (state / f"{MAC_KEY_NAME}.key").stat().st_mode & 0o777 == 0o600
    assert device_secret(state, MAC_KEY_NAME) == mac_key  # created once, then reused
    store_engine(cache, KEY, b"the engine this device built", mac_key)
    engine, sidecar = engine_paths(cache, KEY)
    planted = b"\x7fELF a planted engine with a plugin that runs code"
    engine.write_bytes(planted)
    forged = json.loads(sidecar.read_text())
    forged["engine_sha256"] = hashlib.sha256(planted).hexdigest()
    sidecar.write_text(json.dumps(forged))
    with pytest.raises(EngineTampered, match="not authenticated"):
        read_engine(cache, KEY, mac_key)
    forged["mac"] = engine_mac(b"a key the attacker made up", KEY, planted)
    sidecar.write_text(json.dumps(forged))
    with pytest.raises(EngineTampered):
        read_engine(cache, KEY, mac_key)
    del forged["mac"]
    sidecar.write_text(json.dumps(forged))
    with pytest.raises(EngineTampered):
        read_engine(cache, KEY, mac_key)
    # The same engine from another device (another key) is refused too; rebuilt here, it is accepted again.
    other = device_secret(tmp_path / "other-device", MAC_KEY_NAME)
    assert other != mac_key
    store_engine(cache, KEY, planted, other)
    with pytest.raises(EngineTampered):
        read_engine(cache, KEY, mac_key)
    store_engine(cache, KEY, b"rebuilt", mac_key)
    assert read_engine(cache, KEY, mac_key) == b"rebuilt"


def test_device_key_that_others_can_read_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    device_secret(state, MAC_KEY_NAME)
    key_file = state / f"{MAC_KEY_NAME}.key"
    key_file.chmod(0o644)
    with pytest.raises(DeviceStateError, match="mode 0600"):
        device_secret(state, MAC_KEY_NAME)
    key_file.chmod(0o600)
    key_file.write_bytes(b"short")
    with pytest.raises(DeviceStateError, match="holds 5 bytes"):
        device_secret(state, MAC_KEY_NAME)


def test_cache_file_names_differ_per_key(tmp_path: Path) -> None:
    names = {
        engine_paths(tmp_path, replace(KEY, **change))[0].name
        for change in ({}, {"gpu_name": "NVIDIA H100"}, {"precision": "int8"}, {"tensorrt_version": "8.6.2"})
    }
    assert len(names) == 4
    assert all(name.endswith(".engine") and "/" not in name for name in names)


@pytest.mark.tensorrt
@pytest.mark.gpu
@requires_tensorrt
@requires_cuda
def test_build_and_load_fp16_engine_from_the_tiny_bundle(tiny_bundle: TinyBundle, tmp_path: Path) -> None:
    from edge_agent.bundle import load_bundle
    from edge_agent.trt import device_key, load_engine

    onnx = load_bundle(tiny_bundle.path, tiny_bundle.public_key).read_variant("fp32")
    state = tmp_path / "state"
    engine_path = build_engine(onnx, tmp_path, precision="fp16", state_dir=state)
    assert engine_path.is_file() and (tmp_path / "timing.cache").is_file()
    assert build_engine(onnx, tmp_path, precision="fp16", state_dir=state) == engine_path  # cache hit
    engine = load_engine(onnx, tmp_path, precision="fp16", state_dir=state)
    assert engine is not None
    key = device_key(onnx, "fp16")
    _, sidecar = engine_paths(tmp_path, key)
    data = json.loads(sidecar.read_text())
    data["key"]["gpu_name"] = "some other GPU"
    sidecar.write_text(json.dumps(data))
    with pytest.raises(EngineKeyMismatch, match="gpu_name"):
        load_engine(onnx, tmp_path, precision="fp16", state_dir=state)
    engine_path.write_bytes(b"planted")
    rebuilt = build_engine(onnx, tmp_path, precision="fp16", state_dir=state)  # refused, then rebuilt
    assert rebuilt.read_bytes() != b"planted"
    assert load_engine(onnx, tmp_path, precision="fp16", state_dir=state) is not None


@pytest.mark.tensorrt
@pytest.mark.gpu
@requires_tensorrt
@requires_cuda
def test_the_staging_check_builds_the_engine_beside_the_staged_version(tiny_bundle: TinyBundle, tmp_path: Path) -> None:
    """On a TensorRT device the update's staging check (worker thread, the old model still counting) builds the
    candidate's engine into ``versions/<v>.trt-cache``; the swap's load then finds it (a cache hit, no rebuild),
    and pruning the version removes it."""
    import shutil

    from edge_agent.bundle import load_bundle
    from edge_agent.detectors.base import DetectorOptions, create_detector
    from edge_agent.update import staging
    from edge_agent.update.check import check_candidate
    from edge_agent.update.config import UpdateConfig

    models = tmp_path / "models"
    version_dir = staging.version_dir(models, 2)
    shutil.copytree(tiny_bundle.path, version_dir)
    bundle = load_bundle(version_dir, [tiny_bundle.public_key])
    state = tmp_path / "state"
    cfg = UpdateConfig(models_dir=models, release_keys=[], backends=["tensorrt"], check_runs=2)
    report = check_candidate(bundle, cfg, state_dir=state)
    assert report.backend == "TensorRTDetector"
    engines = sorted(bundle.engine_cache_dir().glob("*.engine"))
    assert bundle.engine_cache_dir() == models / "versions" / "2.trt-cache" and len(engines) == 1
    built = engines[0].stat().st_mtime_ns
    swapped_in = create_detector(["tensorrt"], bundle, None, DetectorOptions(state_dir=state))
    swapped_in.close()
    assert engines[0].stat().st_mtime_ns == built  # the swap loaded the staged engine, it did not build again
    staging.prune_versions(models, {1})
    assert not version_dir.exists() and not bundle.engine_cache_dir().exists()

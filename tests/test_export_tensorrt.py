"""TensorRT engine building: clear errors without TensorRT, cache-key checks, and a real build where available."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from edge_agent.trt import EngineKey, EngineKeyMismatch, TensorRTUnavailable, build_engine, tensorrt_available
from edge_agent.trt.cache import check_sidecar, engine_paths, write_sidecar
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
    engine, sidecar = engine_paths(tmp_path, KEY)
    engine.write_bytes(b"serialized engine")
    write_sidecar(sidecar, KEY, engine)
    check_sidecar(sidecar, KEY, engine)  # same key: accepted
    for field, value in (("gpu_name", "NVIDIA H100"), ("compute_capability", "9.0"), ("tensorrt_version", "8.6.2"),
                         ("precision", "int8"), ("onnx_sha256", "cd" * 32)):
        with pytest.raises(EngineKeyMismatch, match=field):
            check_sidecar(sidecar, replace(KEY, **{field: value}), engine)
    engine.write_bytes(b"serialized engine, then corrupted")
    with pytest.raises(EngineKeyMismatch, match="corrupted"):
        check_sidecar(sidecar, KEY, engine)
    sidecar.write_text(json.dumps({"key": {"gpu_name": "x"}}))
    with pytest.raises(EngineKeyMismatch, match="unreadable"):
        check_sidecar(sidecar, KEY, engine)


def test_cache_file_names_differ_per_key(tmp_path: Path) -> None:
    names = {engine_paths(tmp_path, replace(KEY, **change))[0].name for change in
             ({}, {"gpu_name": "NVIDIA H100"}, {"precision": "int8"}, {"tensorrt_version": "8.6.2"})}
    assert len(names) == 4
    assert all(name.endswith(".engine") and "/" not in name for name in names)


@pytest.mark.tensorrt
@pytest.mark.gpu
@requires_tensorrt
@requires_cuda
def test_build_and_load_fp16_engine_from_the_tiny_bundle(tiny_bundle: TinyBundle, tmp_path: Path) -> None:
    from edge_agent.bundle import load_bundle
    from edge_agent.trt import device_key, load_engine

    onnx = load_bundle(tiny_bundle.path, tiny_bundle.public_key).variant_path("fp32")
    engine_path = build_engine(onnx, tmp_path, precision="fp16")
    assert engine_path.is_file() and (tmp_path / "timing.cache").is_file()
    assert build_engine(onnx, tmp_path, precision="fp16") == engine_path  # cache hit
    engine = load_engine(onnx, tmp_path, precision="fp16")
    assert engine is not None
    key = device_key(onnx, "fp16")
    _, sidecar = engine_paths(tmp_path, key)
    data = json.loads(sidecar.read_text())
    data["key"]["gpu_name"] = "some other GPU"
    sidecar.write_text(json.dumps(data))
    with pytest.raises(EngineKeyMismatch, match="gpu_name"):
        load_engine(onnx, tmp_path, precision="fp16")

"""Detector back ends on a real signed bundle with real onnxruntime: registry, fallback, contract, bad bundles."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent import preprocess
from edge_agent.app import StartupError, load_detector
from edge_agent.bundle import generate_keypair, load_bundle
from edge_agent.bundle.manifest import CPU_INT8_VARIANT, MANIFEST_NAME, parse_manifest
from edge_agent.config import load_config_data
from edge_agent.detectors import (
    REGISTRY,
    Detections,
    DetectorOptions,
    DetectorUnavailable,
    available,
    create_detector,
    detector_class,
)
from edge_agent.detectors.onnxruntime import OnnxRuntimeDetector
from tests.helpers.agent import REPO_ROOT, agent_config, write_config
from tests.helpers.bundles import rebundle


@pytest.fixture(scope="module")
def verified(agent_bundle):
    return load_bundle(agent_bundle.path, [agent_bundle.public_key])


def test_unknown_backend_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="onnxruntime, tensorrt"):
        detector_class("openvino")


def test_onnxruntime_is_available_here() -> None:
    ok, reason = available("onnxruntime")
    assert ok and "CPUExecutionProvider" in reason


def test_tensorrt_unavailable_is_a_reason_not_a_crash() -> None:
    ok, reason = available("tensorrt")
    if ok:
        pytest.skip("TensorRT is installed on this machine")
    assert "tensorrt" in reason.lower() or "cuda-python" in reason


def test_fallback_order_picks_the_first_available(verified) -> None:
    detector = create_detector(["tensorrt", "onnxruntime"], verified, None, DetectorOptions(threads=1))
    assert detector.name == ("tensorrt" if available("tensorrt")[0] else "onnxruntime")
    assert detector.describe()["version"] == verified.manifest.version


def test_no_available_backend_says_why(verified) -> None:
    if available("tensorrt")[0]:
        pytest.skip("TensorRT is installed on this machine")
    with pytest.raises(DetectorUnavailable, match=r"tensorrt: .*(tensorrt|TensorRT|cuda-python)"):
        create_detector(["tensorrt"], verified, None, DetectorOptions())


def test_onnxruntime_detections_follow_the_contract(verified) -> None:
    detector = create_detector(["onnxruntime"], verified, None, DetectorOptions(score_threshold=0.0, threads=1))
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    detections = detector.detect(frame)
    assert detections.boxes.dtype == np.float32 and detections.boxes.shape == (len(detections), 4)
    assert detections.labels.dtype == np.int64
    assert len(detections) > 0  # threshold 0: the untrained model still proposes boxes
    assert (detections.boxes[:, [0, 2]] <= 1280).all() and (detections.boxes[:, [1, 3]] <= 720).all()
    assert (detections.boxes >= 0).all()
    # Same result as running the contract by hand: letterbox -> session -> divide by the scale.
    tensor, fit = preprocess.letterbox(frame, detector.input_width, detector.input_height)
    raw_boxes, raw_scores, _ = detector.session.run(None, {"images": tensor})
    expected = preprocess.boxes_to_source(raw_boxes, fit)
    np.testing.assert_allclose(detections.boxes, expected, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(detections.scores, raw_scores)


def test_score_threshold_filters(verified) -> None:
    detector = create_detector(["onnxruntime"], verified, None, DetectorOptions(score_threshold=1.0, threads=1))
    assert len(detector.detect(np.zeros((100, 200, 3), np.uint8))) == 0
    default = create_detector(["onnxruntime"], verified, None, DetectorOptions(threads=1))
    assert default.score_threshold == verified.manifest.score_threshold


def test_unknown_variant_is_refused(verified) -> None:
    with pytest.raises(Exception, match="has no variant 'int4'"):
        create_detector(["onnxruntime"], verified, "int4", DetectorOptions())


def test_detections_reject_inconsistent_shapes() -> None:
    with pytest.raises(ValueError, match="inconsistent"):
        Detections(np.zeros((2, 4), np.float32), np.zeros(3, np.float32), np.zeros(3, np.int64))
    assert len(Detections.empty()) == 0


def _cfg(tmp_path: Path, bundle_path: Path, key: Path) -> object:
    class _B:
        path = bundle_path
        public_key = key

    return load_config_data(agent_config(tmp_path, _B, "clip.mp4", 1883))


def test_bundle_signed_by_an_untrusted_key_is_refused(tmp_path: Path, agent_bundle) -> None:
    other = tmp_path / "other.pub"
    generate_keypair(tmp_path / "other.pem", other)
    with pytest.raises(StartupError, match="refused:.*(signature|trusted)"):
        load_detector(_cfg(tmp_path, agent_bundle.path, other))


def test_tampered_model_file_is_refused(tmp_path: Path, agent_bundle) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(agent_bundle.path, copy)
    onnx = next(copy.glob("*.onnx"))
    data = bytearray(onnx.read_bytes())
    data[-10] ^= 0xFF
    onnx.write_bytes(bytes(data))
    with pytest.raises(StartupError, match="sha256"):
        load_detector(_cfg(tmp_path, copy, agent_bundle.public_key))


def test_load_detector_from_config(tmp_path: Path, agent_bundle) -> None:
    detector, seconds = load_detector(_cfg(tmp_path, agent_bundle.path, agent_bundle.public_key))
    assert seconds > 0
    assert detector.describe()["backend"] in ("onnxruntime", "tensorrt")
    assert len(detector.detect(np.zeros((192, 320, 3), np.uint8)).boxes.shape) == 2


def _int8_default_bundle(tmp_path: Path, agent_bundle, private_key: Path, cpu_int8: bool) -> Path:
    """The tiny (fp32) bundle plus real INT8 models quantized from it: `int8` (symmetric, the default) and
    optionally `int8_cpu` (uint8 activations), re-signed."""
    from export.quantize import quantize_int8, random_calibration_frames

    source = tmp_path / f"source-{cpu_int8}"
    shutil.copytree(agent_bundle.path, source)
    manifest = parse_manifest((source / MANIFEST_NAME).read_bytes())
    variants = manifest.model_dump(mode="json")["variants"]
    fp32 = source / variants["fp32"]["file"]
    frames = random_calibration_frames(manifest.input.width, manifest.input.height, count=4)
    modes = {"int8": "symmetric", **({CPU_INT8_VARIANT: "asymmetric"} if cpu_int8 else {})}
    for name, activations in modes.items():
        path = quantize_int8(fp32, source / f"{name}.onnx", frames, activations=activations)
        variants[name] = {
            "file": path.name,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "size": path.stat().st_size,
            "f2": None,
            "map50": None,
            "latency_ms": None,
        }
    return rebundle(source, tmp_path / f"bundle-{cpu_int8}", private_key, variants=variants, default_variant="int8")


def test_onnxruntime_on_cpu_runs_the_cpu_int8_variant_unless_told_otherwise(
    tmp_path: Path, agent_bundle, bundle_keys
) -> None:
    keys = [bundle_keys.public]
    verified = load_bundle(_int8_default_bundle(tmp_path, agent_bundle, bundle_keys.private, True), keys)
    cpu_only = DetectorOptions(threads=1, extra={"providers": ["CPUExecutionProvider"]})
    chosen = create_detector(["onnxruntime"], verified, None, cpu_only)
    assert chosen.variant == CPU_INT8_VARIANT and chosen.model_path.name == "int8_cpu.onnx"
    assert chosen.describe()["variant"] == CPU_INT8_VARIANT  # what the counts and model topics report
    frame = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    assert isinstance(chosen.detect(frame), Detections)  # the uint8-activation model really runs
    assert create_detector(["onnxruntime"], verified, "int8", cpu_only).variant == "int8"  # configured wins
    without = load_bundle(_int8_default_bundle(tmp_path, agent_bundle, bundle_keys.private, False), keys)
    assert create_detector(["onnxruntime"], without, None, cpu_only).variant == "int8"  # no int8_cpu: the default
    fp32_default = load_bundle(agent_bundle.path, [agent_bundle.public_key])
    assert fp32_default.manifest.default_variant == "fp32"
    assert create_detector(["onnxruntime"], fp32_default, None, cpu_only).variant == "fp32"  # only int8 is swapped


# -- back-end fallback that really falls back ------------------------------------------------------------------------
class WarmUpFails(OnnxRuntimeDetector):
    """A real onnxruntime detector whose warm-up hits a (back-end) error, as a CUDA fault would."""

    name = "warmup-fails"
    closed: list[str] = []

    def warm_up(self) -> None:
        self.detect(np.zeros((self.input_height, self.input_width, 3), np.uint8))  # really runs once
        raise RuntimeError("CUDA error 700: an illegal memory access was encountered\n(second line of the report)")

    def close(self) -> None:
        type(self).closed.append("closed")
        super().close()


class CacheUnwritable(OnnxRuntimeDetector):
    """Builds its session, then fails half-way through __init__ writing an engine cache that cannot be created."""

    name = "cache-unwritable"
    closed: list[bool] = []

    def __init__(self, bundle, variant, options) -> None:
        super().__init__(bundle, variant, options)
        (options.engine_cache_dir / "engines").mkdir(parents=True)  # the cache "dir" is a file: a real OSError

    def close(self) -> None:
        type(self).closed.append(self.session is not None)  # the partial detector had a session to free
        super().close()


@pytest.fixture
def failing_backends(monkeypatch):
    monkeypatch.setitem(REGISTRY, "warmup-fails", f"{__name__}:WarmUpFails")
    monkeypatch.setitem(REGISTRY, "cache-unwritable", f"{__name__}:CacheUnwritable")
    WarmUpFails.closed, CacheUnwritable.closed = [], []


def test_any_back_end_failure_falls_back_to_the_next(verified, failing_backends, tmp_path: Path, caplog) -> None:
    not_a_dir = tmp_path / "cache"
    not_a_dir.write_text("a file where the engine cache should be")
    options = DetectorOptions(threads=1, engine_cache_dir=not_a_dir)
    with caplog.at_level(logging.WARNING, logger="edge_agent.detectors.base"):
        detector = create_detector(["warmup-fails", "cache-unwritable", "onnxruntime"], verified, None, options)
    assert type(detector) is OnnxRuntimeDetector and detector.name == "onnxruntime"
    assert WarmUpFails.closed == ["closed"] and CacheUnwritable.closed == [True]  # the partial ones were closed
    assert "warmup-fails failed to start" in caplog.text and "CUDA error 700" in caplog.text
    assert "cache-unwritable failed to start" in caplog.text
    with pytest.raises(DetectorUnavailable) as failed:
        create_detector(["warmup-fails", "cache-unwritable"], verified, None, options)
    message = str(failed.value)
    assert "\n" not in message  # one line, however long the native report
    assert "warmup-fails: RuntimeError: CUDA error 700" in message and "cache-unwritable: " in message


def test_model_that_breaks_the_input_contract_exits_2_with_one_line(tmp_path: Path, agent_bundle, bundle_keys) -> None:
    """A real onnxruntime model whose warm-up fails: the manifest (signed) says 160x96, the graph is fixed at
    another size, so the first inference raises inside onnxruntime."""
    manifest = parse_manifest((agent_bundle.path / MANIFEST_NAME).read_bytes())
    assert manifest.input.shape != (1, 3, 96, 160)
    bundle = rebundle(
        agent_bundle.path,
        tmp_path / "bundle",
        bundle_keys.private,
        input=manifest.input.model_dump(mode="json") | {"shape": [1, 3, 96, 160]},
    )
    cfg = _cfg(tmp_path, bundle, bundle_keys.public)
    cfg.detector.backends = ["onnxruntime"]
    with pytest.raises(StartupError, match="no detector back end could run: onnxruntime: .*"):
        load_detector(cfg)
    config = write_config(tmp_path / "agent.yaml", cfg.model_dump(mode="json"))
    proc = subprocess.run(
        [sys.executable, "-m", "starfish_cli", "agent", "run", "--config", str(config), "--no-console"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "60"},
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if "cannot start" in line]
    assert len(lines) == 1 and "onnxruntime: " in lines[0] and "Traceback" not in proc.stderr, proc.stderr


def test_systemd_does_not_restart_on_exit_2() -> None:
    unit = (REPO_ROOT / "edge_agent/systemd/starfish-agent.service").read_text()
    assert "\nRestartPreventExitStatus=2\n" in unit and "\nRestart=always\n" in unit


def test_onnxruntime_tensorrt_ep_caches_engines_in_the_state_dir(verified, tmp_path: Path) -> None:
    """onnxruntime's TensorRT EP loads cached engines unauthenticated: by default they go where no bundle (and
    no other user) can write, the 0700 state directory."""
    from edge_agent.detectors.onnxruntime import ort_trt_cache_dir

    state = tmp_path / "state"
    assert ort_trt_cache_dir(verified, DetectorOptions(state_dir=state)) == state / "ort-trt-engines"
    assert state.stat().st_mode & 0o777 == 0o700
    assert ort_trt_cache_dir(verified, DetectorOptions(state_dir=state, engine_cache_dir=tmp_path / "c")) == (
        tmp_path / "c"
    )  # configured wins
    assert ort_trt_cache_dir(verified, DetectorOptions()) == verified.engine_cache_dir()

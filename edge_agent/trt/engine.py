"""Build a TensorRT engine from an ONNX file (fp16, or int8 from a QDQ model) and load it with a key check.

Follows the TensorRT Python API: Builder -> network (explicit batch) -> OnnxParser -> BuilderConfig (workspace
pool limit, precision flags, timing cache) -> build_serialized_network; Runtime.deserialize_cuda_engine to load.
INT8 uses *explicit* quantization: the Q/DQ nodes of the ONNX carry the scales, so no calibrator is set; the INT8
flag allows int8 kernels and FP16 lets the non-quantized layers (the float detection tail) run in half precision.
The timing cache is kept in the cache directory and reused across builds, which makes rebuilds much faster.
Engines are cached with a MAC made with a device-local key (`edge_agent.trt.cache`): a planted engine is rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from edge_agent.trt.cache import (
    MAC_KEY_NAME,
    PRECISIONS,
    EngineKey,
    atomic_write,
    engine_paths,
    read_engine,
    store_engine,
)
from edge_agent.trt.errors import EngineKeyMismatch, TensorRTError
from edge_agent.trt.runtime import TrtLogger, gpu_identity, require_tensorrt

logger = logging.getLogger(__name__)

TIMING_CACHE_NAME = "timing.cache"
# Ops the engine must support for our exported Faster R-CNN (opset 17). TensorRT's ONNX parser maps
# NonMaxSuppression to its NMS layer and RoiAlign to the ROIAlign_TRT plugin (libnvinfer_plugin, which must be
# registered before parsing and before deserializing: `_init_plugins`). Targets TensorRT 8.5+ (JetPack 5.1+).
REQUIRED_ONNX_OPS = (
    "Conv",
    "Relu",
    "HardSwish",
    "HardSigmoid",
    "GlobalAveragePool",
    "MaxPool",
    "Resize",
    "Add",
    "Mul",
    "Sub",
    "Div",
    "Exp",
    "Log",
    "Sqrt",
    "Gemm",
    "Flatten",
    "Reshape",
    "Transpose",
    "Concat",
    "Slice",
    "Gather",
    "Unsqueeze",
    "Squeeze",
    "Shape",
    "TopK",
    "NonMaxSuppression",
    "RoiAlign",
    "Sigmoid",
    "Softmax",
    "Clip",
    "Floor",
    "Cast",
    "Where",
    "NonZero",
    "Expand",
    "ScatterElements",
    "ReduceProd",
    "If",
    "ConstantOfShape",
    "QuantizeLinear",
    "DequantizeLinear",
)


OnnxSource = bytes | str | os.PathLike


def _onnx_bytes(onnx: OnnxSource) -> tuple[bytes, str]:
    """(model bytes, name for messages): bytes are used as given (already verified), a path is read once."""
    if isinstance(onnx, bytes):
        return onnx, "model"
    path = Path(onnx)
    return path.read_bytes(), path.name


def device_key(onnx: OnnxSource, precision: str) -> EngineKey:
    """The cache key of ``onnx`` (verified bytes, or a path read once) built at ``precision`` on this machine."""
    if precision not in PRECISIONS:
        raise TensorRTError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    trt = require_tensorrt()
    name, cc = gpu_identity()
    data, _ = _onnx_bytes(onnx)
    return EngineKey(hashlib.sha256(data).hexdigest(), trt.__version__, name, cc, precision)


def engine_mac_key(state_dir: str | os.PathLike | None) -> bytes:
    """The device-local key that authenticates cached engines (created 0600 in the state directory)."""
    from edge_agent.device_state import DeviceStateError, default_state_dir, device_secret

    try:
        return device_secret(state_dir if state_dir is not None else default_state_dir(), MAC_KEY_NAME)
    except DeviceStateError as exc:
        raise TensorRTError(f"engine cache key: {exc}") from exc


def ensure_engine(
    onnx: OnnxSource,
    cache_dir: str | os.PathLike,
    *,
    precision: str = "fp16",
    workspace_bytes: int = 1 << 30,
    rebuild: bool = False,
    state_dir: str | os.PathLike | None = None,
    name: str | None = None,
) -> tuple[Path, bytes]:
    """The engine of ``onnx`` for this device: the cached one if it is authentic and built for exactly this key,
    else a fresh build (stored with its MAC). Returns (engine path, the engine bytes to deserialize)."""
    trt = require_tensorrt()
    data, default_name = _onnx_bytes(onnx)
    name = name or default_name
    cache_dir = Path(cache_dir)
    key = device_key(data, precision)
    mac_key = engine_mac_key(state_dir)
    engine_path, _ = engine_paths(cache_dir, key)
    if not rebuild:
        try:
            cached = read_engine(cache_dir, key, mac_key)
        except EngineKeyMismatch as exc:
            logger.warning("refusing the cached engine for %s (%s); rebuilding it", name, exc)
        else:
            if cached is not None:
                logger.info("engine cache hit: %s", engine_path)
                return engine_path, cached
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TensorRTError(f"engine cache {cache_dir}: {exc.strerror or exc}") from exc
    serialized = _build(trt, data, name, cache_dir, key, precision, workspace_bytes)
    try:
        store_engine(cache_dir, key, serialized, mac_key)
    except OSError as exc:
        raise TensorRTError(f"cannot write the engine to {cache_dir}: {exc.strerror or exc}") from exc
    logger.info("wrote %s (%.1f MB)", engine_path, len(serialized) / 1e6)
    return engine_path, serialized


def build_engine(
    onnx: OnnxSource,
    cache_dir: str | os.PathLike,
    *,
    precision: str = "fp16",
    workspace_bytes: int = 1 << 30,
    rebuild: bool = False,
    state_dir: str | os.PathLike | None = None,
) -> Path:
    """Build (or reuse an authentic cached) engine of ``onnx`` for this device in ``cache_dir``; its path."""
    return ensure_engine(
        onnx, cache_dir, precision=precision, workspace_bytes=workspace_bytes, rebuild=rebuild, state_dir=state_dir
    )[0]


def _build(
    trt: Any, data: bytes, name: str, cache_dir: Path, key: EngineKey, precision: str, workspace_bytes: int
) -> bytes:
    trt_logger = TrtLogger.create(trt)
    _init_plugins(trt, trt_logger)
    builder = trt.Builder(trt_logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode (and the flag deprecated) in 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    # The parser gets the verified bytes: nothing is reopened by path between the check and the build.
    if not parser.parse(data):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TensorRTError(f"TensorRT {trt.__version__} cannot parse {name}: {'; '.join(errors)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision in ("fp16", "int8"):
        if not builder.platform_has_fast_fp16:
            logger.warning("this GPU has no fast fp16; building anyway")
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        if not _has_qdq(network, trt):
            raise TensorRTError(f"{name} has no Q/DQ nodes: int8 needs the QDQ model (`export int8`)")
        config.set_flag(trt.BuilderFlag.INT8)
    # The timing cache only steers tactic choice (a bad one costs speed, not correctness); TensorRT validates it.
    timing_path = cache_dir / TIMING_CACHE_NAME
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    logger.info(
        "building %s engine from %s (TensorRT %s, %s sm%s)",
        precision,
        name,
        key.tensorrt_version,
        key.gpu_name,
        key.compute_capability,
    )
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTError(f"TensorRT failed to build {name}: {'; '.join(trt_logger.errors) or 'no detail'}")
    atomic_write(timing_path, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def load_engine(
    onnx: OnnxSource,
    cache_dir: str | os.PathLike,
    precision: str = "fp16",
    *,
    state_dir: str | os.PathLike | None = None,
) -> Any:
    """Deserialize the cached engine for ``onnx`` on this device; `EngineKeyMismatch` if it was built for
    another ONNX / TensorRT / GPU / precision, `EngineTampered` if it is not authentic, `TensorRTError` if there
    is none."""
    key = device_key(onnx, precision)
    engine = read_engine(Path(cache_dir), key, engine_mac_key(state_dir))
    if engine is None:
        expected = engine_paths(Path(cache_dir), key)[0].name
        raise TensorRTError(
            f"no engine for this device in {cache_dir} (expected {expected}); build it with `starfish export tensorrt`"
        )
    return deserialize_engine(engine)


def deserialize_engine(engine: bytes) -> Any:
    """A TensorRT engine from (already authenticated) serialized bytes."""
    trt = require_tensorrt()
    trt_logger = TrtLogger.create(trt)
    _init_plugins(trt, trt_logger)
    result = trt.Runtime(trt_logger).deserialize_cuda_engine(engine)
    if result is None:
        raise TensorRTError(f"TensorRT could not deserialize the engine: {'; '.join(trt_logger.errors)}")
    return result


def _init_plugins(trt: Any, trt_logger: Any) -> None:
    """Register TensorRT's standard plugins (ROIAlign_TRT among them); idempotent."""
    if not trt.init_libnvinfer_plugins(trt_logger, ""):
        raise TensorRTError("TensorRT's plugin library (libnvinfer_plugin) could not be initialised")


def _has_qdq(network: Any, trt: Any) -> bool:
    quantize = getattr(trt.LayerType, "QUANTIZE", None)
    return any(network.get_layer(i).type == quantize for i in range(network.num_layers))

"""Build a TensorRT engine from an ONNX file (fp16, or int8 from a QDQ model) and load it with a key check.

Follows the TensorRT Python API: Builder -> network (explicit batch) -> OnnxParser -> BuilderConfig (workspace
pool limit, precision flags, timing cache) -> build_serialized_network; Runtime.deserialize_cuda_engine to load.
INT8 uses *explicit* quantization: the Q/DQ nodes of the ONNX carry the scales, so no calibrator is set; the INT8
flag allows int8 kernels and FP16 lets the non-quantized layers (the float detection tail) run in half precision.
The timing cache is kept in the cache directory and reused across builds, which makes rebuilds much faster.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from edge_agent.bundle.files import sha256_file
from edge_agent.trt.cache import PRECISIONS, EngineKey, check_sidecar, engine_paths, write_sidecar
from edge_agent.trt.errors import TensorRTError
from edge_agent.trt.runtime import TrtLogger, gpu_identity, require_tensorrt

logger = logging.getLogger(__name__)

TIMING_CACHE_NAME = "timing.cache"
# Ops the engine must support for our exported Faster R-CNN (opset 17). TensorRT's ONNX parser maps
# NonMaxSuppression to its NMS layer and RoiAlign to the ROIAlign_TRT plugin (libnvinfer_plugin, which must be
# registered before parsing and before deserializing: `_init_plugins`). Targets TensorRT 8.5+ (JetPack 5.1+).
REQUIRED_ONNX_OPS = (
    "Conv", "Relu", "HardSwish", "HardSigmoid", "GlobalAveragePool", "MaxPool", "Resize", "Add", "Mul", "Sub",
    "Div", "Exp", "Log", "Sqrt", "Gemm", "Flatten", "Reshape", "Transpose", "Concat", "Slice", "Gather",
    "Unsqueeze", "Squeeze", "Shape", "TopK", "NonMaxSuppression", "RoiAlign", "Sigmoid", "Softmax", "Clip", "Floor",
    "Cast", "Where", "NonZero", "Expand", "ScatterElements", "ReduceProd", "If", "ConstantOfShape",
    "QuantizeLinear", "DequantizeLinear",
)


def device_key(onnx_path: str | os.PathLike, precision: str) -> EngineKey:
    """The cache key of ``onnx_path`` built at ``precision`` on this machine."""
    if precision not in PRECISIONS:
        raise TensorRTError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    trt = require_tensorrt()
    name, cc = gpu_identity()
    return EngineKey(sha256_file(onnx_path), trt.__version__, name, cc, precision)


def build_engine(
    onnx_path: str | os.PathLike,
    cache_dir: str | os.PathLike,
    *,
    precision: str = "fp16",
    workspace_bytes: int = 1 << 30,
    rebuild: bool = False,
) -> Path:
    """Build (or reuse) the engine of ``onnx_path`` for this device in ``cache_dir``; returns the engine path."""
    trt = require_tensorrt()
    onnx_path, cache_dir = Path(onnx_path), Path(cache_dir)
    key = device_key(onnx_path, precision)
    engine_path, sidecar = engine_paths(cache_dir, key)
    if engine_path.is_file() and sidecar.is_file() and not rebuild:
        check_sidecar(sidecar, key, engine_path)
        logger.info("engine cache hit: %s", engine_path)
        return engine_path
    cache_dir.mkdir(parents=True, exist_ok=True)
    trt_logger = TrtLogger.create(trt)
    _init_plugins(trt, trt_logger)
    builder = trt.Builder(trt_logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode (and the flag deprecated) in 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TensorRTError(f"TensorRT {trt.__version__} cannot parse {onnx_path.name}: {'; '.join(errors)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision in ("fp16", "int8"):
        if not builder.platform_has_fast_fp16:
            logger.warning("this GPU has no fast fp16; building anyway")
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        if not _has_qdq(network, trt):
            raise TensorRTError(f"{onnx_path.name} has no Q/DQ nodes: int8 needs the QDQ model (`export int8`)")
        config.set_flag(trt.BuilderFlag.INT8)
    timing_path = cache_dir / TIMING_CACHE_NAME
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    logger.info("building %s engine from %s (TensorRT %s, %s sm%s)", precision, onnx_path.name, key.tensorrt_version,
                key.gpu_name, key.compute_capability)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTError(f"TensorRT failed to build {onnx_path.name}: {'; '.join(trt_logger.errors) or 'no detail'}")
    _atomic_write(engine_path, bytes(serialized))
    write_sidecar(sidecar, key, engine_path)
    _atomic_write(timing_path, bytes(config.get_timing_cache().serialize()))
    logger.info("wrote %s (%.1f MB)", engine_path, engine_path.stat().st_size / 1e6)
    return engine_path


def load_engine(onnx_path: str | os.PathLike, cache_dir: str | os.PathLike, precision: str = "fp16") -> Any:
    """Deserialize the cached engine for ``onnx_path`` on this device; `EngineKeyMismatch` if it was built for
    another ONNX / TensorRT / GPU / precision, `TensorRTError` if there is none."""
    key = device_key(onnx_path, precision)
    engine_path, sidecar = engine_paths(Path(cache_dir), key)
    if not engine_path.is_file() or not sidecar.is_file():
        raise TensorRTError(f"no engine for this device in {cache_dir} (expected {engine_path.name}); "
                            "build it with `starfish export tensorrt`")
    return load_engine_file(engine_path, sidecar, key)


def load_engine_file(engine_path: Path, sidecar: Path, expected: EngineKey) -> Any:
    """Deserialize ``engine_path`` after checking its sidecar against ``expected``."""
    trt = require_tensorrt()
    check_sidecar(sidecar, expected, engine_path)
    trt_logger = TrtLogger.create(trt)
    _init_plugins(trt, trt_logger)
    engine = trt.Runtime(trt_logger).deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise TensorRTError(f"TensorRT could not deserialize {engine_path}: {'; '.join(trt_logger.errors)}")
    return engine


def _init_plugins(trt: Any, trt_logger: Any) -> None:
    """Register TensorRT's standard plugins (ROIAlign_TRT among them); idempotent."""
    if not trt.init_libnvinfer_plugins(trt_logger, ""):
        raise TensorRTError("TensorRT's plugin library (libnvinfer_plugin) could not be initialised")


def _has_qdq(network: Any, trt: Any) -> bool:
    quantize = getattr(trt.LayerType, "QUANTIZE", None)
    return any(network.get_layer(i).type == quantize for i in range(network.num_layers))


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

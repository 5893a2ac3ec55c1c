"""TensorRT engines for bundles, built on the device (torch-free; TensorRT imported lazily and guarded).

`build_engine(onnx, cache_dir, precision=...)` builds or reuses an engine stored under its cache key (onnx sha256,
TensorRT version, GPU name, compute capability, precision); `load_engine(onnx, cache_dir, precision)` refuses an
engine whose key does not match this device, or that this device's key does not authenticate (a planted
engine). Without TensorRT every entry point raises `TensorRTUnavailable` with the reason; `tensorrt_available()`
tells without raising.
"""

from edge_agent.trt.cache import EngineKey, engine_paths
from edge_agent.trt.engine import (
    REQUIRED_ONNX_OPS,
    build_engine,
    deserialize_engine,
    device_key,
    engine_mac_key,
    ensure_engine,
    load_engine,
)
from edge_agent.trt.errors import EngineKeyMismatch, EngineTampered, TensorRTError, TensorRTUnavailable
from edge_agent.trt.runtime import gpu_identity, tensorrt_available

__all__ = [
    "REQUIRED_ONNX_OPS",
    "EngineKey",
    "EngineKeyMismatch",
    "EngineTampered",
    "TensorRTError",
    "TensorRTUnavailable",
    "build_engine",
    "deserialize_engine",
    "device_key",
    "engine_mac_key",
    "engine_paths",
    "ensure_engine",
    "gpu_identity",
    "load_engine",
    "tensorrt_available",
]

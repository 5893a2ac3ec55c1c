"""Native TensorRT back end: the engine is built from the bundle's ONNX on first use and cached on the device.

Engines are not portable (they depend on the TensorRT version and the GPU), so building and caching is the job of
`edge_agent.trt` (cache key: onnx sha256, TensorRT version, GPU name, compute capability, precision). This file
only runs the engine: TensorRT's Python API (`execute_async_v3`, TensorRT >= 8.5) with device memory from
cuda-python. The detector's outputs have a data-dependent length (boxes after NMS), so they are allocated through
an `IOutputAllocator` that TensorRT calls once the length is known.

`tensorrt` and `cuda-python` are guarded: where either is missing this back end reports why and the registry falls
back to the next configured back end (normally onnxruntime).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from edge_agent import preprocess
from edge_agent.bundle import VerifiedBundle
from edge_agent.detectors.base import Detector, DetectorOptions, DetectorUnavailable

logger = logging.getLogger(__name__)


def _import_cudart() -> tuple[Any | None, str]:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as exc:
            return None, f"cuda-python is not installed ({exc}); pip install cuda-python"
    return cudart, ""


def _probe() -> str:
    """Empty string when TensorRT, its engine cache module and cuda-python are all usable; else why not."""
    from edge_agent.trt import tensorrt_available

    ok, reason = tensorrt_available()
    if not ok:
        return reason
    cudart, reason = _import_cudart()
    if cudart is None:
        return reason
    return ""


def _check(result: tuple) -> Any:
    """cuda-python calls return (error, *values); raise on an error, return the value(s)."""
    err, *values = result
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else values


class TensorRTDetector(Detector):
    name = "tensorrt"

    def __init__(self, bundle: VerifiedBundle, variant: str | None, options: DetectorOptions) -> None:
        super().__init__(bundle, variant, options)
        reason = _probe()
        if reason:
            raise DetectorUnavailable(reason)
        import tensorrt as trt

        from edge_agent.trt import TensorRTError, deserialize_engine, ensure_engine

        cudart, reason = _import_cudart()
        if cudart is None:  # _probe() checked it; a second import cannot fail differently, but say so
            raise DetectorUnavailable(reason)
        self._cudart: Any = cudart
        # An int8 variant is a Q/DQ model (explicit quantization); anything else runs in fp16.
        precision = options.extra.get("precision") or ("int8" if self.variant == "int8" else "fp16")
        cache_dir = options.engine_cache_dir or bundle.engine_cache_dir()
        try:
            # Builds on first use (minutes on a Jetson), then only checks the cache key and MAC (about a second).
            # The ONNX bytes are the verified ones, and the engine bytes deserialized are the authenticated ones.
            _, engine_bytes = ensure_engine(
                bundle.read_variant(self.variant),
                cache_dir,
                precision=precision,
                state_dir=options.state_dir,
                name=self.model_path.name,
            )
            self.engine = deserialize_engine(engine_bytes)
        except TensorRTError as exc:
            raise DetectorUnavailable(f"TensorRT engine for {self.model_path.name}: {exc}") from exc
        self.trt_version = trt.__version__
        self.precision = precision
        self.context = self.engine.create_execution_context()
        self._stream = _check(self._cudart.cudaStreamCreate())
        self._outputs = list(bundle.manifest.outputs.names)
        self._allocator = _make_output_allocator(trt, self._cudart)
        for name in self._outputs:
            self.context.set_output_allocator(name, self._allocator)
        self._dtypes = {name: np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))) for name in self._outputs}
        shape = (1, 3, self.input_height, self.input_width)
        self.context.set_input_shape(preprocess.INPUT_NAME, shape)
        self._input_bytes = int(np.prod(shape)) * 4
        self._input_ptr = _check(self._cudart.cudaMalloc(self._input_bytes))
        self.context.set_tensor_address(preprocess.INPUT_NAME, self._input_ptr)

    @classmethod
    def available(cls) -> tuple[bool, str]:
        reason = _probe()
        return (not reason), (reason or "TensorRT and cuda-python present")

    def infer(self, tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cudart = self._cudart
        tensor = np.ascontiguousarray(tensor, dtype=np.float32)
        if tensor.nbytes != self._input_bytes:
            raise ValueError(f"input tensor has {tensor.nbytes} bytes, engine expects {self._input_bytes}")
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(cudart.cudaMemcpyAsync(self._input_ptr, tensor.ctypes.data, tensor.nbytes, h2d, self._stream))
        if not self.context.execute_async_v3(self._stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        _check(cudart.cudaStreamSynchronize(self._stream))
        results = []
        for name in self._outputs:
            shape = self._allocator.shapes.get(name, (0,))
            host = np.empty(shape, dtype=self._dtypes[name])
            if host.nbytes:
                ptr = self._allocator.buffers[name][0]
                _check(cudart.cudaMemcpy(host.ctypes.data, ptr, host.nbytes, d2h))
            results.append(host)
        return results[0], results[1], results[2]

    def describe(self) -> dict:
        info = super().describe()
        info["tensorrt_version"] = self.trt_version
        return info

    def close(self) -> None:
        # Also called on a detector whose __init__ failed half-way: every attribute may be missing.
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        for ptr, _size in getattr(getattr(self, "_allocator", None), "buffers", {}).values():
            cudart.cudaFree(ptr)
        if getattr(self, "_allocator", None) is not None:
            self._allocator.buffers = {}
        if getattr(self, "_input_ptr", None):
            cudart.cudaFree(self._input_ptr)
            self._input_ptr = None
        if getattr(self, "_stream", None) is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None
        # Drop the execution context before the engine that owns it (TensorRT frees device memory with them).
        self.context = None
        self.engine = None


def _make_output_allocator(trt: Any, cudart: Any) -> Any:
    """An `IOutputAllocator` that keeps one growing device buffer per output and records the final shapes."""

    class OutputAllocator(trt.IOutputAllocator):
        def __init__(self) -> None:
            super().__init__()
            self.buffers: dict[str, tuple[int, int]] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}

        def reallocate_output(self, tensor_name: str, memory: int, size: int, alignment: int) -> int:
            ptr, capacity = self.buffers.get(tensor_name, (0, 0))
            if size > capacity or not ptr:
                if ptr:
                    cudart.cudaFree(ptr)
                ptr = _check(cudart.cudaMalloc(max(int(size), 256)))
                self.buffers[tensor_name] = (ptr, max(int(size), 256))
            return ptr

        def reallocate_output_async(
            self, tensor_name: str, memory: int, size: int, alignment: int, stream: int
        ) -> int:  # TensorRT 10 calls this one
            return self.reallocate_output(tensor_name, memory, size, alignment)

        def notify_shape(self, tensor_name: str, shape: Any) -> None:
            self.shapes[tensor_name] = tuple(int(d) for d in shape)

    return OutputAllocator()

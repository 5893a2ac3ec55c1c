"""Native TensorRT back end: the engine is built from the bundle's ONNX on first use and cached on the device.

Engines are not portable (they depend on the TensorRT version and the GPU), so building and caching is the job of
the torch-free `edge_agent.trt` module (cache key: onnx sha256, TensorRT version, GPU name, compute capability).
Both `tensorrt` and `edge_agent.trt` are guarded: where either is missing this back end is unavailable with a logged
reason and the registry falls back to the next configured back end (normally onnxruntime).
"""

from __future__ import annotations

import importlib
import logging

import numpy as np

from edge_agent.bundle import VerifiedBundle
from edge_agent.detectors.base import Detector, DetectorOptions, DetectorUnavailable

logger = logging.getLogger(__name__)


def _import_trt() -> tuple[object | None, str]:
    try:
        import tensorrt  # noqa: F401 - only probing that the native library loads
    except ImportError as exc:
        return None, f"TensorRT is not installed ({exc}); it ships with JetPack on a Jetson"
    except OSError as exc:  # libnvinfer present but a CUDA library missing
        return None, f"TensorRT cannot load its native libraries: {exc}"
    try:
        module = importlib.import_module("edge_agent.trt")
    except ImportError as exc:
        return None, f"edge_agent.trt is unavailable: {exc}"
    return module, ""


class TensorRTDetector(Detector):
    name = "tensorrt"

    def __init__(self, bundle: VerifiedBundle, variant: str | None, options: DetectorOptions) -> None:
        super().__init__(bundle, variant, options)
        trt_module, reason = _import_trt()
        if trt_module is None:
            raise DetectorUnavailable(reason)
        cache_dir = options.engine_cache_dir or (bundle.root.parent / f"{bundle.root.name}.trt-cache")
        try:
            # Builds on first use (minutes on a Jetson), then loads the cached engine in about a second.
            self.engine = trt_module.load_or_build_engine(self.model_path, cache_dir)
        except Exception as exc:  # noqa: BLE001 - TensorRT raises untyped runtime errors
            raise DetectorUnavailable(f"TensorRT engine for {self.model_path.name} failed: {exc}") from exc
        self.trt_version = getattr(self.engine, "trt_version", None)

    @classmethod
    def available(cls) -> tuple[bool, str]:
        module, reason = _import_trt()
        return (module is not None), (reason or "TensorRT present")

    def infer(self, tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        outputs = self.engine.infer(tensor)
        names = self.bundle.manifest.outputs.names
        return outputs[names[0]], outputs[names[1]], outputs[names[2]]

    def describe(self) -> dict:
        info = super().describe()
        info["tensorrt_version"] = self.trt_version
        return info

    def close(self) -> None:
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()

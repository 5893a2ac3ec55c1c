"""TensorRT errors: absent, failed to build, or an engine that was not built for this device."""

from __future__ import annotations


class TensorRTError(RuntimeError):
    """TensorRT is present but building or loading an engine failed."""


class TensorRTUnavailable(TensorRTError):
    """TensorRT (or a CUDA GPU) is not available on this machine."""


class EngineKeyMismatch(TensorRTError):
    """A cached engine was built for another ONNX file, TensorRT version, GPU or precision."""


class EngineTampered(EngineKeyMismatch):
    """A cached engine's MAC does not verify with this device's key: planted or copied in, never loaded."""

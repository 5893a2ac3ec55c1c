"""Skip-with-reason markers for hardware and optional packages (after lightning-hydra-template's run_if)."""

from __future__ import annotations

import importlib.util
import shutil

import pytest


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _cuda_available() -> bool:
    if not _has_module("torch"):
        return False
    import torch

    return torch.cuda.is_available()


requires_cuda = pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU (none visible to torch here)")
requires_tensorrt = pytest.mark.skipif(
    not _has_module("tensorrt"), reason="needs TensorRT's Python package (Jetson / CUDA host only)"
)
requires_torch = pytest.mark.skipif(not _has_module("torch"), reason="needs the `train` extra (torch)")
requires_mosquitto = pytest.mark.skipif(
    shutil.which("mosquitto") is None, reason="needs the mosquitto broker binary (apt-get install mosquitto)"
)
requires_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (apt-get install ffmpeg)")

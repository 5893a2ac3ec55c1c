"""Guarded access to TensorRT and to the GPU's identity (name, compute capability), torch-free.

TensorRT is imported lazily and only here, so a machine without it can import everything else; the reason it is
unavailable is kept and reported, not swallowed.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

from edge_agent.trt.errors import TensorRTUnavailable

logger = logging.getLogger(__name__)

# What the code targets: JetPack 5.1 (TensorRT 8.5), JetPack 6.x (TensorRT 8.6 / 10.3) and TensorRT 10 on x86 CUDA
# hosts. ONNX opset 17 is the newest that TensorRT 8.5/8.6 parse.
SUPPORTED_TRT_MAJOR = (8, 10)


@lru_cache(maxsize=1)
def _import() -> tuple[ModuleType | None, str]:
    try:
        import tensorrt as trt
    except ImportError as exc:
        return None, f"the tensorrt Python package is not installed ({exc}); TensorRT runs on a Jetson or CUDA host"
    except OSError as exc:  # the wheel is there but libnvinfer / CUDA libraries are not
        return None, f"tensorrt is installed but its libraries cannot be loaded: {exc}"
    return trt, ""


def tensorrt_available() -> tuple[bool, str]:
    """(available, reason when not)."""
    trt, reason = _import()
    return trt is not None, reason


def require_tensorrt() -> ModuleType:
    trt, reason = _import()
    if trt is None:
        raise TensorRTUnavailable(reason)
    major = int(trt.__version__.split(".")[0])
    if major not in range(SUPPORTED_TRT_MAJOR[0], SUPPORTED_TRT_MAJOR[1] + 1):
        logger.warning("TensorRT %s is outside the tested range %s", trt.__version__, SUPPORTED_TRT_MAJOR)
    return trt


class TrtLogger:
    """Bridges TensorRT's logger into Python logging (created lazily: it subclasses trt.ILogger)."""

    @staticmethod
    def create(trt: Any) -> Any:  # `trt` is the tensorrt module, which has no type information
        class _Bridge(trt.ILogger):
            _levels = {
                trt.ILogger.INTERNAL_ERROR: logging.CRITICAL,
                trt.ILogger.ERROR: logging.ERROR,
                trt.ILogger.WARNING: logging.WARNING,
                trt.ILogger.INFO: logging.INFO,
                trt.ILogger.VERBOSE: logging.DEBUG,
            }

            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity: Any, msg: str) -> None:
                level = self._levels.get(severity, logging.INFO)
                if level >= logging.ERROR:
                    self.errors.append(msg)
                # INFO from TensorRT is very chatty (every tactic); keep it at DEBUG.
                logging.getLogger("tensorrt").log(logging.DEBUG if level == logging.INFO else level, "%s", msg)

        return _Bridge()


def gpu_identity() -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of device 0, without torch.

    Tries cuda-python, then `nvidia-smi`, then the Jetson device tree; raises `TensorRTUnavailable` if none works.
    """
    identity = _from_cuda_python() or _from_nvidia_smi() or _from_jetson()
    if identity is None:
        raise TensorRTUnavailable("no CUDA GPU found (cuda-python, nvidia-smi and the Jetson device tree all failed)")
    return identity


def _from_cuda_python() -> tuple[str, str] | None:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            return None
    err, props = cudart.cudaGetDeviceProperties(0)
    if int(err) != 0:
        return None
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.strip("\x00 "), f"{props.major}.{props.minor}"


def _from_nvidia_smi() -> tuple[str, str] | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    first = out.strip().splitlines()[0] if out.strip() else ""
    if "," not in first:
        return None
    name, cc = (part.strip() for part in first.rsplit(",", 1))
    return name, cc


# Jetson modules have no nvidia-smi on JetPack 5; the SoC fixes the compute capability.
_JETSON_CC = {"orin": "8.7", "xavier": "7.2", "nano": "5.3", "tx2": "6.2"}


def _from_jetson() -> tuple[str, str] | None:
    model = Path("/proc/device-tree/model")
    if not model.is_file():
        return None
    name = model.read_text(errors="replace").strip("\x00 \n")
    for marker, cc in _JETSON_CC.items():
        if marker in name.lower():
            return name, cc
    return None

"""Machine fingerprint stored with every result, so numbers from different machines are never compared blindly.

Everything is read without importing heavy libraries where possible (package versions come from
``importlib.metadata``); torch is imported only to ask for its CUDA / cuDNN build and the GPU it sees. Facts that
cannot be read on this machine are recorded as ``None`` rather than guessed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

logger = logging.getLogger(__name__)

# (key in the fingerprint, distributions that provide it: the first one installed wins)
_PACKAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("numpy", ("numpy",)),
    ("opencv", ("opencv-python-headless", "opencv-python", "opencv-contrib-python")),
    ("onnxruntime", ("onnxruntime-gpu", "onnxruntime")),
    ("torch", ("torch",)),
    ("torchvision", ("torchvision",)),
    ("tensorrt", ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-libs")),
)

# Keys that identify the hardware and software stack; the fingerprint id hashes only these.
_IDENTITY_KEYS = (
    "cpu_model",
    "cpu_logical_cores",
    "gpu_name",
    "gpu_driver",
    "cuda",
    "cudnn",
    "tensorrt",
    "onnxruntime",
    "torch",
    "l4t",
    "power_mode",
)


def machine_fingerprint() -> dict[str, object]:
    """CPU, GPU, driver, CUDA/cuDNN/TensorRT, library versions, Jetson release and power mode where readable."""
    info: dict[str, object] = {
        "hostname": platform.node(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_logical_cores": os.cpu_count(),
        "cpu_physical_cores": _physical_cores(),
        "cpu_governor": _read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "memory_gb": _memory_gb(),
        # Not identity: how busy the machine was when the run started (other work skews shared machines).
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    for key, dists in _PACKAGES:
        info[key] = _package_version(dists)
    if info["tensorrt"] is None:
        info["tensorrt"] = _tensorrt_module_version()
    info.update(_gpu_facts())
    info.update(_jetson_facts())
    info["onnxruntime_providers"] = _ort_providers()
    info["fingerprint_id"] = fingerprint_id(info)
    return info


def fingerprint_id(info: dict[str, object]) -> str:
    """Short stable hash of the identity fields, to tell at a glance whether two results share a machine."""
    identity = {k: info.get(k) for k in _IDENTITY_KEYS}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]


def machine_slug(info: dict[str, object]) -> str:
    """A file-name friendly label: the GPU name when there is one, else the CPU model and its thread count."""
    label = str(info.get("gpu_name") or f"{info.get('cpu_model') or 'unknown'}-{info.get('cpu_logical_cores')}c")
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")[:40] or "unknown"


def _package_version(dists: tuple[str, ...]) -> str | None:
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _cpu_model() -> str | None:
    text = _read_text("/proc/cpuinfo") or ""
    for key in ("model name", "Hardware", "Model"):  # x86, older ARM kernels, Raspberry Pi style
        match = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if match:
            return match.group(1).strip()
    return platform.processor() or None


def _physical_cores() -> int | None:
    try:
        import psutil

        return psutil.cpu_count(logical=False)
    except ImportError:
        return None


def _memory_gb() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        return None


def _ort_providers() -> list[str] | None:
    try:
        import onnxruntime

        return list(onnxruntime.get_available_providers())
    except ImportError:
        return None


def _gpu_facts() -> dict[str, object]:
    facts: dict[str, object] = {
        "gpu_name": None,
        "gpu_driver": None,
        "gpu_compute_capability": None,
        "cuda": None,
        "cudnn": None,
    }
    smi = shutil.which("nvidia-smi")
    if smi:
        out = _run([smi, "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"])
        if out:
            parts = [p.strip() for p in out.splitlines()[0].split(",")]
            facts["gpu_name"], facts["gpu_driver"] = parts[0], parts[1] if len(parts) > 1 else None
            if len(parts) > 2:
                facts["gpu_compute_capability"] = parts[2]
            facts["gpu_count"] = len(out.splitlines())
    facts["cuda"] = _cuda_toolkit_version()
    facts["cudnn"] = _dpkg_version("libcudnn9-cuda-12", "libcudnn9", "libcudnn8")
    try:
        import torch
    except ImportError:
        return facts
    facts["torch_cuda_build"] = torch.version.cuda
    if torch.cuda.is_available():
        facts["cuda"] = torch.version.cuda
        facts["cudnn"] = str(torch.backends.cudnn.version())
        facts["gpu_name"] = facts["gpu_name"] or torch.cuda.get_device_name(0)
        major, minor = torch.cuda.get_device_capability(0)
        facts["gpu_compute_capability"] = facts["gpu_compute_capability"] or f"{major}.{minor}"
    return facts


def _jetson_facts() -> dict[str, object]:
    """JetPack / L4T release and the nvpmodel power mode; all None off a Jetson."""
    facts: dict[str, object] = {"l4t": None, "jetpack": None, "power_mode": None}
    release = _read_text("/etc/nv_tegra_release")
    if release:
        match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", release)
        facts["l4t"] = f"{match.group(1)}.{match.group(2)}" if match else release.splitlines()[0]
    facts["jetpack"] = _dpkg_version("nvidia-jetpack") if release else None
    if shutil.which("nvpmodel"):
        mode = _run(["nvpmodel", "-q"])
        facts["power_mode"] = " ".join(mode.split()) if mode else None
    if facts["l4t"] and not facts.get("gpu_name"):
        facts["gpu_name"] = _read_text("/proc/device-tree/model")
    return facts


def _tensorrt_module_version() -> str | None:
    """Jetson images install TensorRT's Python module from apt, without pip metadata."""
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except ImportError:
        return None


def _cuda_toolkit_version() -> str | None:
    version_json = _read_text("/usr/local/cuda/version.json")
    if version_json:
        try:
            return str(json.loads(version_json)["cuda"]["version"])
        except (ValueError, KeyError):
            pass
    return _dpkg_version("cuda-toolkit", "cuda-cudart-12-6", "cuda-cudart-12-2", "cuda-cudart-11-4")


def _dpkg_version(*packages: str) -> str | None:
    if not shutil.which("dpkg-query"):
        return None
    for package in packages:
        version = _run(["dpkg-query", "-W", "-f=${Version}", package])
        if version:
            return version
    return None


def _read_text(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return None


def _run(cmd: list[str]) -> str | None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.debug("%s failed: %s", cmd[0], exc)
        return None
    return done.stdout.strip() if done.returncode == 0 else None

"""Engine cache key and file layout: engines are not portable, so each is stored under what it was built for.

Key = (onnx sha256, TensorRT version, GPU name, compute capability, precision). The engine file name carries a
digest of the key; a JSON sidecar carries the key itself plus the engine's own sha256, so a load can refuse an
engine built elsewhere (or one that was corrupted) with a message naming the field that differs.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from edge_agent.bundle.files import sha256_file
from edge_agent.trt.errors import EngineKeyMismatch

Precision = str  # "fp16" | "int8" | "fp32"
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class EngineKey:
    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: Precision

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def file_stem(self) -> str:
        gpu = re.sub(r"[^a-z0-9]+", "-", self.gpu_name.lower()).strip("-")[:40]
        sm = self.compute_capability.replace(".", "")
        return f"{self.onnx_sha256[:12]}-trt{self.tensorrt_version}-{gpu}-sm{sm}-{self.precision}-{self.digest()}"


def engine_paths(cache_dir: Path, key: EngineKey) -> tuple[Path, Path]:
    stem = key.file_stem()
    return cache_dir / f"{stem}.engine", cache_dir / f"{stem}.json"


def write_sidecar(path: Path, key: EngineKey, engine_path: Path) -> None:
    data = {"key": asdict(key), "engine_sha256": sha256_file(engine_path)}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def check_sidecar(path: Path, expected: EngineKey, engine_path: Path) -> None:
    """Raise `EngineKeyMismatch` unless the sidecar's key equals ``expected`` and the engine bytes are intact."""
    try:
        data = json.loads(path.read_text())
        recorded = EngineKey(**data["key"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EngineKeyMismatch(f"{path}: unreadable engine cache key ({exc})") from exc
    differences = [
        f"{name}: engine {getattr(recorded, name)!r} vs this device {getattr(expected, name)!r}"
        for name in asdict(expected)
        if getattr(recorded, name) != getattr(expected, name)
    ]
    if differences:
        raise EngineKeyMismatch(f"{engine_path.name} was built for something else: {'; '.join(differences)}")
    if sha256_file(engine_path) != data.get("engine_sha256"):
        raise EngineKeyMismatch(f"{engine_path} does not match the sha256 recorded when it was built (corrupted?)")

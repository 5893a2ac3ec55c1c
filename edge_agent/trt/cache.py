"""Engine cache key, file layout and authentication (pure Python: no TensorRT needed to test it).

Engines are not portable, so each is stored under what it was built for: key = (onnx sha256, TensorRT version, GPU
name, compute capability, precision). The engine file name carries a digest of the key; a JSON sidecar carries the
key itself, the engine's sha256 and an HMAC-SHA256 over (key, engine bytes) made with a device-local secret
(`edge_agent.device_state.device_secret`, 0600 in the state directory, never in the cache). A deserialized engine is
native code's input: anyone who can write the cache directory could plant one *and* a self-written sidecar with the
right sha256, but not the MAC, so a planted engine is refused (and rebuilt) instead of loaded.

Reads follow the bundle rule: the engine file is read once, authenticated, and those bytes are what gets
deserialized.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from edge_agent.trt.errors import EngineKeyMismatch, EngineTampered

Precision = str  # "fp16" | "int8" | "fp32"
PRECISIONS = ("fp32", "fp16", "int8")
MAC_KEY_NAME = "engine-cache"  # device_secret name: state_dir/engine-cache.key
MAX_ENGINE_BYTES = 4 << 30
_MAX_SIDECAR_BYTES = 64 << 10


@dataclass(frozen=True)
class EngineKey:
    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: Precision

    def canonical(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    def digest(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()[:16]

    def file_stem(self) -> str:
        gpu = re.sub(r"[^a-z0-9]+", "-", self.gpu_name.lower()).strip("-")[:40]
        sm = self.compute_capability.replace(".", "")
        return f"{self.onnx_sha256[:12]}-trt{self.tensorrt_version}-{gpu}-sm{sm}-{self.precision}-{self.digest()}"


def engine_paths(cache_dir: Path, key: EngineKey) -> tuple[Path, Path]:
    stem = key.file_stem()
    return cache_dir / f"{stem}.engine", cache_dir / f"{stem}.json"


def engine_mac(mac_key: bytes, key: EngineKey, engine: bytes) -> str:
    """HMAC-SHA256 over the cache key and the engine bytes (length-prefixed: no two inputs share a message)."""
    canonical = key.canonical()
    message = len(canonical).to_bytes(8, "big") + canonical + engine
    return hmac.new(mac_key, message, hashlib.sha256).hexdigest()


def write_sidecar(path: Path, key: EngineKey, engine: bytes, mac_key: bytes) -> None:
    data = {
        "key": asdict(key),
        "engine_sha256": hashlib.sha256(engine).hexdigest(),
        "mac": engine_mac(mac_key, key, engine),
    }
    atomic_write(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def check_sidecar(path: Path, expected: EngineKey, engine: bytes, mac_key: bytes) -> None:
    """Raise `EngineKeyMismatch` unless the sidecar's key equals ``expected`` and the engine bytes are intact,
    `EngineTampered` unless they are authenticated by this device's key."""
    try:
        data = json.loads(_read_capped(path, _MAX_SIDECAR_BYTES))
        recorded = EngineKey(**data["key"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EngineKeyMismatch(f"{path}: unreadable engine cache key ({exc})") from exc
    differences = [
        f"{name}: engine {getattr(recorded, name)!r} vs this device {getattr(expected, name)!r}"
        for name in asdict(expected)
        if getattr(recorded, name) != getattr(expected, name)
    ]
    if differences:
        raise EngineKeyMismatch(f"{path.stem} was built for something else: {'; '.join(differences)}")
    if hashlib.sha256(engine).hexdigest() != data.get("engine_sha256"):
        raise EngineKeyMismatch(
            f"{path.stem}: the engine does not match the sha256 recorded when it was built (corrupted?)"
        )
    mac = data.get("mac")
    if not isinstance(mac, str) or not hmac.compare_digest(mac, engine_mac(mac_key, expected, engine)):
        raise EngineTampered(
            f"{path.stem}: the engine is not authenticated by this device's engine-cache key "
            "(planted, or built by another device)"
        )


def store_engine(cache_dir: Path, key: EngineKey, engine: bytes, mac_key: bytes) -> Path:
    """Write ``engine`` and its authenticated sidecar under ``key``; returns the engine path."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    engine_path, sidecar = engine_paths(cache_dir, key)
    atomic_write(engine_path, engine)
    write_sidecar(sidecar, key, engine, mac_key)
    return engine_path


def read_engine(cache_dir: Path, key: EngineKey, mac_key: bytes) -> bytes | None:
    """The cached engine for ``key``, read once and authenticated; None when there is none. Raises
    `EngineKeyMismatch` / `EngineTampered` for an engine that is there but must not be loaded."""
    engine_path, sidecar = engine_paths(cache_dir, key)
    if not engine_path.exists() and not sidecar.exists():
        return None
    try:
        engine = _read_capped(engine_path, MAX_ENGINE_BYTES)
    except OSError as exc:
        raise EngineKeyMismatch(f"{engine_path}: unreadable cached engine ({exc.strerror or exc})") from exc
    check_sidecar(sidecar, key, engine, mac_key)
    return engine


def atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_capped(path: Path, max_bytes: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OSError(f"{path} is larger than {max_bytes} bytes")
    return data

"""File helpers shared by the bundle writer and reader: hashing and safe `.tar` unpacking."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from edge_agent.bundle.errors import BundleError

_CHUNK = 1 << 20
# A bundle is a handful of model files; refuse archives that would fill the disk when unpacked.
MAX_UNPACKED_BYTES = 2 << 30


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_tar(path: Path) -> bool:
    return path.is_file() and tarfile.is_tarfile(path)


def unpack_tar(archive: Path, dest: Path) -> Path:
    """Unpack a bundle `.tar` into the new directory ``dest`` (atomically: temp dir + rename).

    Only flat regular files are accepted: no directories, links, devices or path tricks, so an archive can never
    write outside ``dest``. tarfile's `data` filter is applied as a second line of defence.
    """
    if dest.exists():
        raise BundleError(f"cannot unpack {archive} into {dest}: it already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            total = 0
            for member in members:
                name = member.name.removeprefix("./")
                if not member.isfile() or "/" in name or name in ("", ".", ".."):
                    raise BundleError(f"{archive}: member {member.name!r} is not a plain file at the archive root")
                total += member.size
                if total > MAX_UNPACKED_BYTES:
                    raise BundleError(f"{archive}: unpacked size exceeds {MAX_UNPACKED_BYTES} bytes")
                member.name = name
            tar.extractall(staging, members=members, filter="data")
        os.replace(staging, dest)
    except tarfile.TarError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise BundleError(f"{archive} is not a readable tar archive: {exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest

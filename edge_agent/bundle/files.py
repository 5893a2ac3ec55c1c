"""File helpers shared by the bundle writer and reader: hashing, bounded reads inside a bundle, safe `.tar` access.

The reader's rule is *read once, then use those bytes*: every file is read into memory with a size cap, hashed, and
whatever is built from it (an onnxruntime session, a TensorRT parser) is built from the same bytes, so nothing can
be swapped on disk between the check and the use.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
from pathlib import Path

from edge_agent.bundle.errors import BundleError, TooLargeError

_CHUNK = 1 << 20
# A bundle is a handful of model files; refuse archives that would fill the disk when unpacked.
MAX_UNPACKED_BYTES = 2 << 30


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_bundle_file(root: Path, name: str, max_bytes: int) -> bytes:
    """Read ``root / name`` whole, refusing a file that is not regular, resolves outside ``root`` (a symlink out
    of the bundle) or holds more than ``max_bytes``.

    ``root`` must already be resolved (`os.path.realpath`). The final open uses ``O_NOFOLLOW`` on the resolved
    path, and the size cap is applied while reading, so a file that grows after a `stat` cannot exhaust memory.
    """
    link = root / name
    resolved = Path(os.path.realpath(link))
    if not resolved.is_relative_to(root):
        raise BundleError(f"{name} resolves to {resolved}, outside the bundle {root}: refused")
    try:
        fd = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{name} is missing from the bundle {root}") from exc
    except OSError as exc:
        raise BundleError(f"cannot open {name} in the bundle {root}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise BundleError(f"{name} in the bundle {root} is not a regular file: refused")
        try:
            data = handle.read(max_bytes + 1)
        except OSError as exc:  # a failing card: a refusal with the reason, not a traceback
            raise BundleError(f"cannot read {name} in the bundle {root}: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise TooLargeError(f"{name} holds more than the {max_bytes} bytes allowed")
    return data


class TarMembers:
    """The regular files at the root of a bundle `.tar`, read on demand into memory with a size cap each.

    Only flat regular files are accepted (no directories, links, devices or path tricks); a name that appears
    twice is refused, so what is verified is the only content that name can have.
    """

    def __init__(self, archive: Path) -> None:
        self.archive = archive
        try:
            self._tar = tarfile.open(archive)
        except (OSError, EOFError, tarfile.TarError) as exc:
            raise BundleError(f"{archive} is not a readable tar archive: {exc}") from exc
        try:
            members = self._tar.getmembers()
        except (OSError, EOFError, tarfile.TarError) as exc:
            self.close()
            raise BundleError(f"{archive} is not a readable tar archive: {exc}") from exc
        self._members: dict[str, tarfile.TarInfo] = {}
        for member in members:
            name = member.name.removeprefix("./")
            if not member.isfile() or "/" in name or name in ("", ".", ".."):
                self.close()
                raise BundleError(f"{archive}: member {member.name!r} is not a plain file at the archive root")
            if name in self._members:
                self.close()
                raise BundleError(f"{archive}: member {name!r} appears more than once")
            self._members[name] = member

    def names(self) -> list[str]:
        return list(self._members)

    def has(self, name: str) -> bool:
        return name in self._members

    def read(self, name: str, max_bytes: int) -> bytes:
        member = self._members.get(name)
        if member is None:
            raise FileNotFoundError(f"{name} is missing from {self.archive}")
        if member.size > max_bytes:
            raise TooLargeError(f"{name} is {member.size} bytes, more than the {max_bytes} allowed")
        try:
            handle = self._tar.extractfile(member)
            if handle is None:  # pragma: no cover - regular members always extract
                raise BundleError(f"{self.archive}: cannot read {name}")
            return handle.read(max_bytes + 1)
        except (OSError, EOFError, tarfile.TarError) as exc:  # truncated archive, failing storage
            raise BundleError(f"{self.archive}: cannot read {name}: {exc}") from exc

    def close(self) -> None:
        self._tar.close()

    def __enter__(self) -> TarMembers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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

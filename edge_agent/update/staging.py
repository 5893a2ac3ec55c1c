"""On-disk layout of updates under ``models_dir`` and the two filesystem moves that must be atomic.

    models_dir/
      downloads/<name>-<version>-<sha12>.tar(.part)   fetched bundles (the .part is resumed after a restart)
      versions/<version>/                             unpacked, verified bundles (the previous one is kept)
      current -> versions/<version>                   what the agent loads at start-up

`stage` unpacks through `edge_agent.bundle.unpack_tar` (a temporary sibling directory renamed into place), so a
crash leaves either no ``versions/<v>`` or a complete one; leftovers of a killed unpack are removed on re-entry.
`point_current` replaces the link with `os.replace` of a fresh symlink (atomic on POSIX) and fsyncs the directory,
so after a power cut ``current`` names either the old or the new version, never nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from edge_agent.bundle.files import unpack_tar
from edge_agent.bundle.loader import ENGINE_CACHE_SUFFIX
from edge_agent.durable import fsync_path, fsync_tree

logger = logging.getLogger(__name__)

CURRENT = "current"
VERSIONS = "versions"
DOWNLOADS = "downloads"


def download_path(models_dir: Path, name: str, version: int, sha256: str) -> Path:
    return models_dir / DOWNLOADS / f"{name}-{version}-{sha256[:12]}.tar"


def version_dir(models_dir: Path, version: int) -> Path:
    return models_dir / VERSIONS / str(version)


def version_target(version: int) -> str:
    """The relative link target of ``current`` for ``version`` (relative: the tree can move as a whole)."""
    return f"{VERSIONS}/{version}"


def current_target(models_dir: Path) -> str | None:
    """Where ``current`` points (its link text), None when there is no link."""
    try:
        return os.readlink(models_dir / CURRENT)
    except FileNotFoundError:
        return None


def target_version(target: str | None) -> int | None:
    if target is None or not target.startswith(f"{VERSIONS}/"):
        return None
    tail = target[len(VERSIONS) + 1 :]
    return int(tail) if tail.isdigit() else None


def clean_partial_unpacks(models_dir: Path, version: int) -> list[Path]:
    """Remove temporary directories a killed `unpack_tar` of ``version`` left behind."""
    parent = models_dir / VERSIONS
    removed = []
    if parent.is_dir():
        for entry in parent.iterdir():
            if entry.name.startswith(f".{version}.") and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    if removed:
        logger.info("update staging: removed %d partial unpack(s) of v%d", len(removed), version)
    return removed


def stage(models_dir: Path, archive: Path, version: int) -> Path:
    """Unpack ``archive`` into ``versions/<version>`` (fresh), durably."""
    dest = version_dir(models_dir, version)
    clean_partial_unpacks(models_dir, version)
    if dest.exists():
        shutil.rmtree(dest)
    unpack_tar(archive, dest)
    fsync_tree(dest)
    fsync_path(dest.parent)
    return dest


def seed(models_dir: Path, source: Path, version: int) -> Path:
    """First start with updates on: install the configured bundle (directory or .tar) as ``versions/<version>``
    and point ``current`` at it, so that every later update has a previous version to roll back to."""
    dest = version_dir(models_dir, version)
    if not dest.is_dir():
        clean_partial_unpacks(models_dir, version)
        if source.is_file():
            unpack_tar(source, dest)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=dest.parent))
            try:
                for file in sorted(source.iterdir()):
                    if file.is_file():  # bundles are flat; the loader verifies what was copied
                        shutil.copyfile(file, tmp / file.name)
                os.replace(tmp, dest)  # versions/<v> only ever appears complete
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        fsync_tree(dest)
        fsync_path(dest.parent)
    point_current(models_dir, version_target(version))
    logger.info("update: seeded %s from %s", dest, source)
    return dest


def point_current(models_dir: Path, target: str) -> None:
    """Atomically make ``models_dir/current`` a symlink to ``target`` (relative to ``models_dir``)."""
    link = models_dir / CURRENT
    tmp = models_dir / f".{CURRENT}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_path(models_dir)
    logger.info("update: %s -> %s", link, target)


def prune_versions(models_dir: Path, keep: set[int]) -> list[int]:
    """Remove ``versions/<v>`` not in ``keep`` (the running and the previous version are kept for rollback), and
    with each its TensorRT engine cache ``versions/<v>.trt-cache`` (built beside it by the staging check)."""
    removed = []
    parent = models_dir / VERSIONS
    for entry in sorted(parent.iterdir()) if parent.is_dir() else []:
        version = entry.name.removesuffix(ENGINE_CACHE_SUFFIX)
        if version.isdigit() and int(version) not in keep:
            shutil.rmtree(entry, ignore_errors=True)
            if entry.name == version:
                removed.append(int(version))
    return removed

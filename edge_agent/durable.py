"""fsync helpers for writes that must survive a power cut: a rename is durable only once the data it moves and the
directory entry it changes have both reached the disk."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush one file's data, or one directory's entries, to the disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file directly in ``root`` (bundles and version directories are flat), then ``root`` itself."""
    for path in root.iterdir():
        if path.is_file():
            fsync_path(path)
    fsync_path(root)

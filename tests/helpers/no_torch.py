"""Run Python code in a subprocess where `import torch` (and torchvision, lightning) fails, as on a lean Jetson."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

TORCH = ("torch", "torchvision", "lightning", "pytorch_lightning", "torch_pruning")
# What the lean edge runtime must not need at import time: the other units and evaluation-only packages.
NOT_EDGE = (*TORCH, "train", "export", "shore", "benchmarks", "pycocotools", "tqdm")

_BLOCKER = """
import importlib.abc, sys

class _BlockTorch(importlib.abc.MetaPathFinder):
    BLOCKED = __BLOCKED__

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.BLOCKED:
            raise ImportError(f"{fullname} is blocked: this process simulates a device without torch")
        return None

sys.meta_path.insert(0, _BlockTorch())
"""


def run_without_torch(
    code: str, timeout: float = 120.0, cwd: Path | None = None, blocked: tuple[str, ...] = TORCH
) -> subprocess.CompletedProcess:
    """Run ``code`` with torch (or every top-level package in ``blocked``) unimportable; returns the completed
    process (stdout/stderr captured as text)."""
    script = _BLOCKER.replace("__BLOCKED__", repr(tuple(blocked))) + "\n" + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(cwd or REPO_ROOT),
    )

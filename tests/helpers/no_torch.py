"""Run Python code in a subprocess where `import torch` (and torchvision, lightning) fails, as on a lean Jetson."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

_BLOCKER = """
import importlib.abc, sys

class _BlockTorch(importlib.abc.MetaPathFinder):
    BLOCKED = ("torch", "torchvision", "lightning", "pytorch_lightning", "torch_pruning")

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.BLOCKED:
            raise ImportError(f"{fullname} is blocked: this process simulates a device without torch")
        return None

sys.meta_path.insert(0, _BlockTorch())
"""


def run_without_torch(code: str, timeout: float = 120.0, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` with torch unimportable; returns the completed process (stdout/stderr captured as text)."""
    script = _BLOCKER + "\n" + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(cwd or REPO_ROOT),
    )

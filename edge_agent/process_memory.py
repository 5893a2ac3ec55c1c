"""This process's peak resident memory, shared by the agent's run summary and the benchmark workers (torch-free)."""

from __future__ import annotations

import sys
from pathlib import Path


def peak_rss_mb() -> float:
    """Highest RSS this process has had so far.

    Linux: ``VmHWM`` from /proc/self/status, which belongs to this process's address space. Not
    ``getrusage().ru_maxrss``: Linux keeps that across ``execve``, so a child would inherit the high-water mark of
    the (larger) parent that forked it.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # kB
    except OSError:
        pass
    import psutil

    info = psutil.Process().memory_info()
    peak_wset = getattr(info, "peak_wset", None)  # Windows only, so not in psutil's Linux type stubs
    if peak_wset is not None:
        return float(peak_wset) / 2**20
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # macOS reports bytes

"""Peak memory of the process running one back end: resident set size, and GPU memory where NVML can see it.

Each back end runs in its own process (see `benchmarks.worker`), so a process-wide high-water mark belongs to that
back end alone. RSS peak comes from the kernel's own high-water mark of the process (no sampling gaps). GPU memory
is sampled in a thread through NVML: the process's own usage when NVML lists our pid, otherwise (containers with
their own pid namespace) the growth of the devices' used memory since sampling began.
Jetsons have no NVML; there GPU memory is part of RSS (unified memory).
"""

from __future__ import annotations

import logging
import os
import threading

from edge_agent.process_memory import peak_rss_mb  # noqa: F401  re-exported: workers and tests use it here

logger = logging.getLogger(__name__)


def current_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class GpuMemorySampler:
    """Samples GPU memory every ``interval_s`` in a daemon thread; `stop()` returns (peak MB, source) or None."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak_process = 0
        self._peak_device_delta = 0
        self._nvml = None
        self._handles: list[object] = []
        self._baseline_used = 0
        self.unavailable: str | None = None

    def start(self) -> GpuMemorySampler:
        try:
            import pynvml

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._nvml = pynvml
        except (ImportError, OSError) as exc:
            self.unavailable = f"nvidia-ml-py not usable: {exc}"
            return self
        except Exception as exc:  # noqa: BLE001 - pynvml raises NVMLError subclasses built at run time
            self.unavailable = f"NVML unavailable (e.g. on a Jetson): {exc}"
            return self
        self._baseline_used = self._device_used()
        self._thread = threading.Thread(target=self._run, name="gpu-memory-sampler", daemon=True)
        self._thread.start()
        return self

    def _device_used(self) -> int:
        return sum(self._nvml.nvmlDeviceGetMemoryInfo(h).used for h in self._handles)

    def _sample(self) -> None:
        pid = os.getpid()
        own = 0
        for handle in self._handles:
            for proc in self._nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == pid and proc.usedGpuMemory:
                    own += proc.usedGpuMemory
        self._peak_process = max(self._peak_process, own)
        self._peak_device_delta = max(self._peak_device_delta, self._device_used() - self._baseline_used)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._sample()
            except Exception as exc:  # noqa: BLE001 - a failed sample must not kill the benchmark
                logger.debug("GPU memory sample failed: %s", exc)
            self._stop.wait(self.interval_s)

    def stop(self) -> tuple[float, str] | None:
        if self._thread is None:
            return None
        self._stop.set()
        self._thread.join(timeout=2)
        try:
            self._sample()
        except Exception as exc:  # noqa: BLE001
            logger.debug("final GPU memory sample failed: %s", exc)
        if self._peak_process:
            return self._peak_process / 2**20, "nvml-process"
        return self._peak_device_delta / 2**20, "nvml-device-delta"

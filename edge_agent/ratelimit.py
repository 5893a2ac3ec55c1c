"""Rate-limited logging: the first occurrence of a kind of event is logged, then at most one line per interval
with how many were suppressed meanwhile (a flood of commands or refusals must not flood the log too)."""

from __future__ import annotations

import threading
import time


class LogLimiter:
    """`allow(key)` -> (log now?, occurrences suppressed since the last logged one)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str, now: float | None = None) -> tuple[bool, int]:
        now = time.monotonic() if now is None else now
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False, 0
            self._last[key] = now
            return True, self._suppressed.pop(key, 0)

"""Compare two benchmark results and list regressions beyond a tolerance (the CI / release gate).

A regression is a metric that got worse by more than the tolerance (relative for speed and memory, absolute
for accuracy scores, which already live on 0..1), or a back end that ran in the base result but not in the new
one. Improvements and unchanged metrics are listed too, so the table shows the whole picture.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from benchmarks.schema import BackendResult, BenchReport

logger = logging.getLogger(__name__)

Better = Literal["lower", "higher"]


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    better: Better
    get: Callable[[BackendResult], float | None]
    absolute: bool = False  # accuracy: tolerance is an absolute difference, not a ratio


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("p50_ms", "ms", "lower", lambda r: r.latency.p50_ms if r.latency else None),
        Metric("p99_ms", "ms", "lower", lambda r: r.latency.p99_ms if r.latency else None),
        Metric("fps", "fps", "higher", lambda r: r.throughput.fps if r.throughput else None),
        Metric("peak_rss_mb", "MB", "lower", lambda r: r.peak_rss_mb),
        Metric("peak_gpu_mb", "MB", "lower", lambda r: r.peak_gpu_mb),
        Metric("load_s", "s", "lower", lambda r: r.load_s),
        Metric("f2", "", "higher", lambda r: r.accuracy.f2 if r.accuracy else None, absolute=True),
        Metric("map_50", "", "higher", lambda r: r.accuracy.map_50 if r.accuracy else None, absolute=True),
    )
}
ABSOLUTE_METRICS = frozenset(m.name for m in METRICS.values() if m.absolute)
DEFAULT_METRICS: tuple[str, ...] = ("p50_ms", "p99_ms", "fps", "peak_rss_mb", "peak_gpu_mb", "f2", "map_50")


@dataclass(frozen=True)
class Row:
    backend: str
    metric: str
    base: float | None
    new: float | None
    change: float | None  # worsening, relative (absolute for accuracy): positive = worse, whichever way is better
    verdict: Literal["regression", "improved", "ok", "missing"]
    note: str = ""

    @property
    def delta(self) -> float | None:
        """How the value itself moved, relative (absolute for accuracy): positive = it went up. This is what a
        person reads: fps 10 -> 12 is +20%, F2 0.80 -> 0.85 is +0.050, whether that is better or worse."""
        if self.base is None or self.new is None:
            return None
        if self.metric in ABSOLUTE_METRICS:
            return self.new - self.base
        if self.base == 0:
            return 0.0 if self.new == 0 else math.copysign(math.inf, self.new)
        return (self.new - self.base) / self.base


@dataclass(frozen=True)
class Comparison:
    rows: list[Row]
    warnings: list[str]

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.verdict == "regression"]


def parse_tolerance(text: str) -> float:
    """``"10%"`` or ``"0.1"`` -> 0.1; negative or unparsable values fail naming the input."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError as exc:
        raise ValueError(f"tolerance must look like 10% or 0.1, got {text!r}") from exc
    if value < 0 or math.isnan(value):
        raise ValueError(f"tolerance must be >= 0, got {text!r}")
    return value


def compare(
    base: BenchReport,
    new: BenchReport,
    tolerance: float,
    accuracy_tolerance: float = 0.02,
    metrics: tuple[str, ...] = DEFAULT_METRICS,
) -> Comparison:
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {', '.join(METRICS)}")
    warnings: list[str] = []
    base_id, new_id = base.machine.get("fingerprint_id"), new.machine.get("fingerprint_id")
    if base_id != new_id:
        warnings.append(
            f"different machines or software stacks (fingerprint {base_id} vs {new_id}): "
            "differences may not be regressions of the code"
        )
    if base.model.name != new.model.name:
        warnings.append(f"different models: {base.model.name} vs {new.model.name}")
    for key in ("threads", "batch"):
        if getattr(base.settings, key) != getattr(new.settings, key):
            warnings.append(f"different {key}: {getattr(base.settings, key)} vs {getattr(new.settings, key)}")

    rows: list[Row] = []
    for old in base.results:
        if old.status != "ok":
            continue
        current = new.result(old.backend)
        if current is None or current.status != "ok":
            status = "absent" if current is None else f"{current.status}: {current.reason}"
            rows.append(Row(old.backend, "status", None, None, None, "regression", f"ran in base, now {status}"))
            continue
        for name in metrics:
            metric = METRICS[name]
            before, after = metric.get(old), metric.get(current)
            if before is None and after is None:  # not applicable (GPU memory of a CPU back end, no --data)
                continue
            rows.append(
                _compare_metric(
                    old.backend, metric, before, after, accuracy_tolerance if metric.absolute else tolerance
                )
            )
    return Comparison(
        rows=[r for r in rows if r.verdict != "missing"] + [r for r in rows if r.verdict == "missing"],
        warnings=warnings,
    )


def _compare_metric(backend: str, metric: Metric, old: float | None, new: float | None, tolerance: float) -> Row:
    if old is None or new is None or math.isnan(old) or math.isnan(new):
        return Row(backend, metric.name, old, new, None, "missing", "not measured in both")
    if metric.absolute:
        change = old - new if metric.better == "higher" else new - old
    elif old == 0:
        change = 0.0 if new == 0 else math.inf
        change = -change if metric.better == "higher" else change
    else:
        change = (new - old) / old if metric.better == "lower" else (old - new) / old
    if change > tolerance:
        verdict = "regression"
    elif change < -tolerance:
        verdict = "improved"
    else:
        verdict = "ok"
    return Row(backend, metric.name, old, new, change, verdict)

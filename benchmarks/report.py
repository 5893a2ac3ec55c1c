"""Outputs of a run: rich table, JSON (the full `BenchReport`), CSV (one row per back end), PNG chart, Markdown."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

from rich.table import Table

from benchmarks.schema import BackendResult, BenchReport

logger = logging.getLogger(__name__)

CSV_COLUMNS: tuple[str, ...] = (
    "backend",
    "status",
    "reason",
    "device",
    "precision",
    "variant",
    "model_size_mb",
    "load_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
    "p50_min_ms",
    "p50_max_ms",
    "fps",
    "fps_min",
    "fps_max",
    "batch",
    "batch_fps",
    "peak_rss_mb",
    "base_rss_mb",
    "peak_gpu_mb",
    "f2",
    "map_50",
    "best_f2",
    "best_threshold",
    "speedup_vs_baseline",
    "achieved_gflops",
    "peak_fraction",
    "peak_key",
    "threads",
    "model",
    "model_version",
    "machine",
    "fingerprint_id",
    "created_at",
)


def csv_row(report: BenchReport, r: BackendResult) -> dict[str, object]:
    lat, acc = r.latency, r.accuracy
    return {
        "backend": r.backend,
        "status": r.status,
        "reason": r.reason or "",
        "device": r.device,
        "precision": r.precision,
        "variant": r.variant or "",
        "model_size_mb": _round(r.model_size_bytes / 1e6 if r.model_size_bytes else None, 2),
        "load_s": _round(r.load_s, 3),
        "p50_ms": _round(lat and lat.p50_ms),
        "p90_ms": _round(lat and lat.p90_ms),
        "p99_ms": _round(lat and lat.p99_ms),
        "mean_ms": _round(lat and lat.mean_ms),
        "p50_min_ms": _round(lat and lat.p50_min_ms),
        "p50_max_ms": _round(lat and lat.p50_max_ms),
        "fps": _round(r.throughput and r.throughput.fps),
        "fps_min": _round(r.throughput and r.throughput.fps_min),
        "fps_max": _round(r.throughput and r.throughput.fps_max),
        "batch": r.batch_throughput.batch if r.batch_throughput else 1,
        "batch_fps": _round(r.batch_throughput and r.batch_throughput.fps),
        "peak_rss_mb": _round(r.peak_rss_mb, 1),
        "base_rss_mb": _round(r.base_rss_mb, 1),
        "peak_gpu_mb": _round(r.peak_gpu_mb, 1),
        "f2": _round(acc and acc.f2, 4),
        "map_50": _round(acc and acc.map_50, 4),
        "best_f2": _round(acc and acc.best_f2, 4),
        "best_threshold": _round(acc and acc.best_threshold, 4),
        "speedup_vs_baseline": _round(r.speedup_vs_baseline, 3),
        "achieved_gflops": _round(r.achieved_gflops, 2),
        "peak_fraction": _round(r.peak_fraction, 4),
        "peak_key": r.peak_key or "",
        "threads": ";".join(f"{k}={v}" for k, v in sorted(r.threads.items())),
        "model": report.model.name,
        "model_version": report.model.version,
        "machine": report.machine.get("gpu_name") or report.machine.get("cpu_model"),
        "fingerprint_id": report.machine.get("fingerprint_id"),
        "created_at": report.created_at,
    }


def _round(value: float | None, digits: int = 2) -> object:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return round(float(value), digits)


def write_json(report: BenchReport, path: Path) -> Path:
    path.write_text(report.model_dump_json(indent=2) + "\n")
    return path


def read_json(path: Path) -> BenchReport:
    """Load a result file; a file that does not match the schema fails naming the field."""
    return BenchReport.model_validate_json(Path(path).read_text())


def write_csv(report: BenchReport, path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        for result in report.results:
            writer.writerow(csv_row(report, result))
    return path


def _fmt(value: float | None, spec: str = ".1f", suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:{spec}}{suffix}"


def results_table(report: BenchReport) -> Table:
    """The run as a terminal table; skipped/failed rows carry their reason in a caption line below."""
    baseline = report.settings.baseline
    table = Table(
        title=f"{report.model.name} v{report.model.version} on "
        f"{report.machine.get('gpu_name') or report.machine.get('cpu_model')} "
        f"({report.settings.threads} threads, load average {report.machine.get('load_average_1m')})"
    )
    for column in (
        "back end",
        "load s",
        "p50 ms",
        "p99 ms",
        "fps",
        "RSS MB",
        "GPU MB",
        "size MB",
        "F2",
        "mAP50",
        f"x {baseline}" if baseline else "speed-up",
        "% peak",
    ):
        table.add_column(column, justify="left" if column == "back end" else "right", no_wrap=True)
    notes = []
    for r in report.results:
        if r.status != "ok":
            style = "yellow" if r.status == "skipped" else "red"
            table.add_row(r.backend, f"[{style}]{r.status}[/{style}]", *["-"] * 10)
            notes.append(f"{r.backend} {r.status}: {r.reason}")
            continue
        lat, acc = r.latency, r.accuracy
        spread = f" ±{(lat.p50_max_ms - lat.p50_min_ms) / 2:.1f}" if lat.repeats > 1 else ""
        table.add_row(
            r.backend,
            _fmt(r.load_s, ".2f"),
            f"{lat.p50_ms:.1f}{spread}",
            _fmt(lat.p99_ms),
            _fmt(r.throughput.fps if r.throughput else None),
            _fmt(r.peak_rss_mb, ".0f"),
            _fmt(r.peak_gpu_mb, ".0f"),
            _fmt(r.model_size_bytes / 1e6 if r.model_size_bytes else None),
            _fmt(acc.f2 if acc else None, ".3f"),
            _fmt(acc.map_50 if acc else None, ".3f"),
            _fmt(r.speedup_vs_baseline, ".2f", "x"),
            _fmt(r.peak_fraction * 100 if r.peak_fraction else None, ".1f"),
        )
    if notes:
        table.caption = "\n".join(notes)
        table.caption_justify = "left"
    return table


def markdown_table(report: BenchReport) -> str:
    """The same table as Markdown, for the README."""
    baseline = report.settings.baseline or "-"
    lines = [
        f"| back end | status | load s | p50 ms (spread) | p90 ms | p99 ms | fps | peak RSS MB | peak GPU MB | "
        f"size MB | F2 | mAP@0.5 | speed-up vs {baseline} | % of peak |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report.results:
        if r.status != "ok":
            lines.append(f"| {r.backend} | {r.status}: {(r.reason or '').replace('|', '/')} |" + " |" * 12)
            continue
        lat, acc = r.latency, r.accuracy
        lines.append(
            f"| {r.backend} | ok | {_fmt(r.load_s, '.2f')} | {lat.p50_ms:.1f} ({lat.p50_min_ms:.1f}-"
            f"{lat.p50_max_ms:.1f}) | {lat.p90_ms:.1f} | {lat.p99_ms:.1f} | "
            f"{_fmt(r.throughput.fps if r.throughput else None)} | {_fmt(r.peak_rss_mb, '.0f')} | "
            f"{_fmt(r.peak_gpu_mb, '.0f')} | {_fmt(r.model_size_bytes / 1e6 if r.model_size_bytes else None)} | "
            f"{_fmt(acc.f2 if acc else None, '.3f')} | {_fmt(acc.map_50 if acc else None, '.3f')} | "
            f"{_fmt(r.speedup_vs_baseline, '.2f', 'x')} | "
            f"{_fmt(r.peak_fraction * 100 if r.peak_fraction else None, '.1f', '%')} |"
        )
    return "\n".join(lines) + "\n"


def write_chart(report: BenchReport, path: Path) -> Path | None:
    """PNG: p50 latency bars with p90-p99 whiskers per back end, and F2 / mAP@0.5 beside them when measured."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on servers, CI or Jetsons
        import matplotlib.pyplot as plt
    except ImportError as exc:
        logger.warning("no chart: matplotlib is not installed (%s)", exc)
        return None
    ran = [r for r in report.results if r.status == "ok" and r.latency]
    if not ran:
        logger.warning("no chart: no back end ran")
        return None
    with_accuracy = [r for r in ran if r.accuracy]
    columns = 2 if with_accuracy else 1
    fig, axes = plt.subplots(1, columns, figsize=(6 * columns, 0.6 * len(ran) + 2), squeeze=False)
    names = [r.backend for r in ran]
    p50 = [r.latency.p50_ms for r in ran]
    p99 = [r.latency.p99_ms for r in ran]
    ax = axes[0][0]
    ax.barh(names, p50, color="tab:blue", label="p50")
    ax.hlines(range(len(names)), p50, p99, color="tab:red", linewidth=1)  # the tail from median to p99
    ax.errorbar(p99, names, fmt="|", color="tab:red", markersize=14, label="p99", linestyle="none")
    for y, (median, tail) in enumerate(zip(p50, p99, strict=True)):
        ax.text(max(median, tail), y, f"  {median:.1f} / {tail:.1f}", va="center", fontsize=8)
    ax.set_xlabel("latency per frame, ms (bar: p50, tick: p99)")
    ax.invert_yaxis()
    ax.set_xlim(0, max(p99) * 1.35)
    ax.legend(loc="lower right", fontsize=8)
    if with_accuracy:
        ax2 = axes[0][1]
        acc_names = [r.backend for r in with_accuracy]
        ys = range(len(acc_names))
        ax2.barh([y - 0.2 for y in ys], [r.accuracy.f2 for r in with_accuracy], height=0.4, label="F2")
        ax2.barh([y + 0.2 for y in ys], [_nan0(r.accuracy.map_50) for r in with_accuracy], height=0.4, label="mAP@0.5")
        ax2.set_yticks(list(ys), acc_names)
        ax2.set_xlim(0, 1)
        ax2.invert_yaxis()
        ax2.set_xlabel(f"accuracy on {with_accuracy[0].accuracy.frames} frames")
        ax2.legend(loc="lower right", fontsize=8)
    machine = report.machine.get("gpu_name") or report.machine.get("cpu_model")
    fig.suptitle(
        f"{report.model.name} v{report.model.version} - {machine} - {report.settings.threads} threads - "
        f"{report.created_at}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _nan0(value: float) -> float:
    return 0.0 if math.isnan(value) else value

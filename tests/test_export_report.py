"""The export report (report.md) cannot say "met" or "PASS" when its own numbers say otherwise."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

pytest.importorskip("torch")

from export.chain import _goals, render_markdown  # noqa: E402


def _report(
    base_ms: float = 145.1,
    int8_ms: float = 40.6,
    base_f2: float = 0.894,
    int8_f2: float = 0.887,
    parity_refs: int = 386,
) -> dict[str, Any]:
    def variant(ms: float, f2: float | None) -> dict[str, Any]:
        v: dict[str, Any] = {
            "params": 4.35e6,
            "macs": 4.85e9,
            "file_bytes": 6.7e6,
            "latency": {"median_ms": ms, "p90_ms": ms * 1.2},
        }
        if f2 is not None:
            v["accuracy"] = {"best_f2": f2, "best_threshold": 0.9, "map50": 0.96, "f2": f2}
        return v

    report: dict[str, Any] = {
        "input_size": [1024, 576],
        "checkpoint": "c.ckpt",
        "checkpoint_sha256": "ab" * 32,
        "created_at": "2026-11-28T01:08:25+00:00",
        "threads": 2,
        "eval_frames": 120,
        "calibration_frames": 100,
        "prune": {"ratio": 0.0, "head_ratio": 0.25, "rpn_ratio": None, "proposals": 50},
        "fine_tune": {"val_f2": 0.8812345, "epochs": 1},
        "variants": {
            "pytorch_fp32": variant(base_ms, base_f2),
            "pruned_onnx_int8": variant(71.9, 0.893),
            "pruned_onnx_int8_cpu": variant(int8_ms, int8_f2),
        },
        "parity_fp32": {
            "frames": 21,
            "reference_detections": parity_refs,
            "matched": parity_refs,
            "min_iou": 1.0,
            "max_score_diff": 1e-5,
            "passed": True,
        },
        "int8_vs_fp32": {
            "frames": 21,
            "reference_detections": 43,
            "matched": 38,
            "min_iou": 0.588,
            "max_score_diff": 0.379,
            "score_floor": 0.5,
        },
        "bundle": {"path": "out/bundle", "version": 5, "score_threshold": 0.906, "size_bytes": 13.5e6},
    }
    report["goals"] = _goals(report)
    return report


def test_f2_drop_is_absolute_and_relative_and_the_goal_follows_the_numbers() -> None:
    markdown = render_markdown(_report())
    line = next(x for x in markdown.splitlines() if "best-threshold F2" in x)
    assert "0.8940 -> 0.8870" in line and "drop **0.0070** absolute" in line and "0.78% relative" in line
    assert line.endswith("met)")
    missed = next(x for x in render_markdown(_report(int8_f2=0.85)).splitlines() if "best-threshold F2" in x)
    assert "drop **0.0440** absolute" in missed and missed.endswith("MISSED)")


def test_latency_verdict_is_computed_from_the_milliseconds_shown() -> None:
    line = next(x for x in render_markdown(_report()).splitlines() if x.startswith("- latency"))
    base, int8, ratio = (float(v) for v in re.findall(r"([\d.]+) ms / .* ([\d.]+) ms = \*\*([\d.]+)x", line)[0])
    assert ratio == pytest.approx(base / int8, abs=0.01) and line.endswith("met)")
    slow = next(x for x in render_markdown(_report(int8_ms=60.0)).splitlines() if x.startswith("- latency"))
    assert "**2.42x**" in slow and slow.endswith("MISSED)")


def test_zero_of_zero_matched_is_never_a_pass() -> None:
    markdown = render_markdown(_report(parity_refs=0))
    line = next(x for x in markdown.splitlines() if "parity" in x)
    assert "0/0 matched" in line and "PASS" not in line and "NOT TESTED" in line


def test_no_python_reprs_in_the_report() -> None:
    report = _report()
    markdown = render_markdown(copy.deepcopy(report))
    assert "{" not in markdown and "None" not in markdown and "': " not in markdown
    assert "pruning: ratio 0, head_ratio 0.25, rpn_ratio -, proposals 50" in markdown
    assert "fine-tune validation: val_f2 0.8812, epochs 1" in markdown

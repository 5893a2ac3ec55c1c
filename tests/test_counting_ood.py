"""The committed demo bundle counting starfish through the real agent on clips it was never trained on.

The clips come from the independent out-of-distribution renderer (train/ood/); the agent runs with a file camera
per clip and publishes to a real Mosquitto. The bound is what the README states for this bundle on these clips
(see train/results/generalize/), not the goal.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.counting import measure_counting

pytestmark = [pytest.mark.slow, pytest.mark.mqtt]

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "models" / "demo" / "bundle"
KEY = REPO / "models" / "demo" / "demo_key.pub"
# Bundle v9 (v8's model files; counting at its calibrated settings, threshold 0.95 and min_hits 2 for int8_cpu) on
# exactly these clips (seed 7, 2 x 60 frames, int8_cpu, 2 threads) counted 28 for 13 true: a total error of 1.15
# (v8 at its best-F2 threshold counted 50, 2.85; v6 119, 8.15; train/results/generalize/stage_e/). Far from the 20 %
# goal: this guards against getting worse, and the bound is to be tightened as the model improves.
STATED_TOTAL_ERROR = 1.3


@pytest.fixture(scope="module")
def ood_clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from train.ood import generate_ood

    root = tmp_path_factory.mktemp("ood_clips")
    generate_ood(root, videos=2, frames=60, seed=7)
    return root


def _agent_counts(clips: Path, broker, workdir: Path, videos: list[int] | None = None):
    return measure_counting(
        BUNDLE, [KEY], clips, videos=videos, host=broker.host, port=broker.port, workdir=workdir, threads=2
    )


def test_demo_bundle_counts_out_of_distribution_clips_within_the_stated_error(ood_clips, mosquitto, tmp_path):
    result = _agent_counts(ood_clips, mosquitto, tmp_path / "agent")
    assert [c.frames for c in result.clips] == [60, 60]
    assert result.total_true > 0
    assert result.total_error <= STATED_TOTAL_ERROR, result.to_dict()


def test_count_sweep_replays_the_agents_own_count(ood_clips, mosquitto, tmp_path):
    """`starfish bench count-sweep` at the agent's own setting (the bundle's calibrated counting settings) gives the
    real agent's count, clip by clip."""
    import json

    from typer.testing import CliRunner

    from edge_agent.bundle import parse_manifest
    from starfish_cli import app

    first = min(int(p.stem.removeprefix("video_")) for p in (ood_clips / "videos").glob("video_*.mp4"))
    agent = _agent_counts(ood_clips, mosquitto, tmp_path / "agent", videos=[first])
    counting = parse_manifest((BUNDLE / "manifest.json").read_bytes()).counting_for(agent.variant)
    assert counting is not None, "the demo bundle carries calibrated counting settings (schema 4)"
    own = counting.min_hits
    other = 8 if own != 8 else 5
    out = tmp_path / "sweep.json"
    argv = ["bench", "count-sweep", str(BUNDLE), "--data", str(ood_clips), "--videos", str(first)]
    argv += ["--min-hits", f"{own},{other}", "--key", str(KEY), "--threads", "2", "--out", str(out)]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    sweep = json.loads(out.read_text())
    assert sweep["variant"] == agent.variant and sweep["frames"] == {str(first): 60}
    assert sweep["bundle_threshold"] == counting.score_threshold  # no --thresholds: the agent's own threshold
    by_hits = {s["setting"]["min_hits"]: s for s in sweep["settings"]}
    assert sorted(by_hits) == sorted([own, other])
    assert by_hits[own]["counted"] == {str(c.video_id): c.counted for c in agent.clips}
    assert by_hits[own]["total_counted"] > 0

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
# Bundles v7 and v8 (pruned; thresholds maximising mean in- and out-of-distribution F2) on exactly these clips
# (seed 7, 2 x 60 frames, int8_cpu, 2 threads) counted 50 for 13 true: a total error of 2.85 (v6 counted 119, 8.15;
# train/results/generalize/README.md). Far from the 20 % goal: this guards against getting worse, and the bound is
# to be tightened as the model improves.
STATED_TOTAL_ERROR = 3.0


@pytest.fixture(scope="module")
def ood_clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from train.ood import generate_ood

    root = tmp_path_factory.mktemp("ood_clips")
    generate_ood(root, videos=2, frames=60, seed=7)
    return root


def test_demo_bundle_counts_out_of_distribution_clips_within_the_stated_error(ood_clips, mosquitto, tmp_path):
    result = measure_counting(
        BUNDLE,
        [KEY],
        ood_clips,
        videos=None,
        host=mosquitto.host,
        port=mosquitto.port,
        workdir=tmp_path / "agent",
        threads=2,
    )
    assert [c.frames for c in result.clips] == [60, 60]
    assert result.total_true > 0
    assert result.total_error <= STATED_TOTAL_ERROR, result.to_dict()

"""`starfish bench pipeline`: the agent's stages timed on a real clip, with the real detector, tracker, outbox and a
real Mosquitto broker receiving the counts (under the `-bench` device id, never the device's own)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from starfish_cli import app
from tests.helpers.agent import agent_config, write_config
from tests.helpers.mqtt_broker import wait_until

pytest.importorskip("onnxruntime", reason="the agent's detector needs the `edge` extra")


@pytest.mark.mqtt
def test_pipeline_profile_times_every_stage_and_publishes(
    tmp_path: Path,
    clip,
    agent_bundle,
    mosquitto,
    mqtt_subscriber,  # noqa: ANN001
) -> None:
    config = write_config(
        tmp_path / "agent.yaml",
        agent_config(tmp_path, agent_bundle, clip.path, mosquitto.port, detector={"backends": ["onnxruntime"]}),
    )
    subscriber = mqtt_subscriber(mosquitto, ["starfish/#"])
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "pipeline",
            "--config",
            str(config),
            "--frames",
            "12",
            "--warmup-frames",
            "2",
            "-o",
            str(tmp_path),
            "--name",
            "profile",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "profile.json").read_text())
    assert report["frames"] == 12 and report["published"] is True
    stages = {s["stage"]: s for s in report["stages"]}
    assert list(stages) == ["decode", "preprocess", "inference", "postprocess", "publish"]
    for stage in stages.values():
        assert 0 <= stage["p50_ms"] <= stage["p99_ms"] and stage["mean_ms"] > 0
    assert sum(s["share"] for s in stages.values()) == pytest.approx(1.0, abs=0.01)
    assert stages["inference"]["mean_ms"] > stages["decode"]["mean_ms"]  # a Faster R-CNN outweighs a 320x192 decode
    assert report["backend"]["backend"] == "onnxruntime"
    assert report["sequential_fps"] > 0 and report["agent_loop_fps"] >= report["sequential_fps"] * 0.9
    assert "inference" in result.output and "agent loop bound" in result.output
    # Every timed and warm-up frame was published, under the bench device id only.
    assert wait_until(lambda: len(subscriber.on("/cam0/counts")) >= 14, timeout=10)
    topics = subscriber.topics()
    assert all(t.startswith("starfish/test-dev-bench/") for t in topics), topics
    assert sorted(m.json()["frame"] for m in subscriber.on("/cam0/counts"))[:14] == list(range(14))


def test_pipeline_names_an_unknown_camera(tmp_path: Path, clip, agent_bundle) -> None:  # noqa: ANN001
    config = write_config(tmp_path / "agent.yaml", agent_config(tmp_path, agent_bundle, clip.path, 1))
    result = CliRunner().invoke(
        app, ["bench", "pipeline", "--config", str(config), "--camera", "nope", "--no-publish", "-o", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "no enabled camera 'nope'" in result.output and "cam0" in result.output

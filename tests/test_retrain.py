"""`starfish retrain`: the release gate on real bundles, and the whole job on a tiny model (fit -> export -> gate ->
release -> retained announcement on a real Mosquitto, bundle fetched over a real HTTP server).

The gate cases need no training: the committed demo bundle (a trained detector) and the tiny untrained bundle
(tests/helpers/bundles.py) are a good and a bad model, scored on a few freshly rendered 1280x720 frames of the
classic synthetic reef. The job runs the smoke preset for a couple of steps at 320x180.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import starfish_cli
from edge_agent.bundle import generate_keypair, load_bundle, load_public_key
from edge_agent.bundle.files import sha256_file
from edge_agent.dataset import ReefDataset
from edge_agent.update.announcement import parse_announcement
from edge_agent.update.download import download
from tests.helpers.bundles import TinyBundle
from tests.helpers.http_server import BundleServer
from tests.helpers.mqtt_broker import wait_until
from tests.helpers.retrain import CHAIN, TRAIN

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo" / "bundle"
DEMO_KEY = ROOT / "models" / "demo" / "demo_key.pub"


@pytest.fixture(scope="module")
def reef_frames(tmp_path_factory: pytest.TempPathFactory) -> list:
    """8 frames of the classic reef at the size the demo model was trained for, every one with starfish."""
    from train.synth import generate_dataset

    root = tmp_path_factory.mktemp("gate-reef")
    generate_dataset(root, videos=1, frames=8, seed=11, empty_fraction=0.0, workers=1, write_video=False)
    return ReefDataset.open(root).records


def _gate(candidate: Path, candidate_key: Path, released: Path, released_key: Path, records: list, **settings):
    from train.retrain import GateConfig, score_bundles

    gate = GateConfig(variant="fp32", latency_runs=3, **settings)
    return score_bundles(load_bundle(candidate, [candidate_key]), load_bundle(released, [released_key]), records, gate)


def test_gate_refuses_a_model_that_counts_worse(reef_frames, tiny_bundle: TinyBundle) -> None:
    result = _gate(tiny_bundle.path, tiny_bundle.public_key, DEMO, DEMO_KEY, reef_frames, latency_budget=100.0)
    assert result["frames"] == len(reef_frames) == 8
    assert result["released"]["f2"] > 0.5, result["released"]  # the trained model finds these starfish
    assert result["candidate"]["f2"] < result["released"]["f2"] - 0.3
    assert not result["passed"]
    assert len(result["reasons"]) == 1 and result["reasons"][0].startswith("F2 dropped by")
    # the untrained model is smaller and faster: latency is not what refused it
    assert result["candidate"]["latency"]["median_ms"] < result["released"]["latency"]["median_ms"]


def test_gate_passes_a_better_model_unless_it_is_too_slow(reef_frames, tiny_bundle: TinyBundle) -> None:
    generous = _gate(DEMO, DEMO_KEY, tiny_bundle.path, tiny_bundle.public_key, reef_frames, latency_budget=1000.0)
    assert generous["passed"] and generous["reasons"] == []
    assert generous["f2_drop"] < -0.3  # F2 rose
    assert generous["candidate"]["input_size"] == [1024, 576] and generous["released"]["input_size"] == [224, 128]
    # The same measurements against the default 10 % latency budget: far slower than the tiny model, refused.
    from train.retrain import GateConfig, judge

    strict = judge(generous["candidate"], generous["released"], GateConfig())
    assert not strict["passed"]
    assert len(strict["reasons"]) == 1 and strict["reasons"][0].startswith("median latency grew by")
    assert strict["latency_growth"] > 0.10


def test_judge_applies_the_tolerance_and_the_budget_at_their_edges() -> None:
    from train.retrain import GateConfig, judge

    def side(version: int, f2: float, ms: float) -> dict:
        return {"version": version, "f2": f2, "latency": {"median_ms": ms}}

    gate = GateConfig(f2_tolerance=0.02, latency_budget=0.10)
    assert judge(side(2, 0.881, 109.9), side(1, 0.900, 100.0), gate)["passed"]  # both just inside
    refused = judge(side(2, 0.870, 111.0), side(1, 0.900, 100.0), gate)
    assert not refused["passed"] and len(refused["reasons"]) == 2


# -- the whole job (the released v1 is tests/helpers/retrain.py's `fleet`) ------------------------------------------


@pytest.mark.mqtt
def test_retrain_fine_tunes_the_released_model_gates_and_releases(
    fleet, synthetic_dataset, bundle_keys, tmp_path, mosquitto, mqtt_subscriber, capsys
) -> None:
    release = tmp_path / "release"
    generate_keypair(release / "release.pem", release / "release.pub")
    out = tmp_path / "job"
    with BundleServer(fleet["store"]) as server:
        argv = [
            "retrain",
            "--data",
            str(synthetic_dataset),
            "--out",
            str(out),
            "--key",
            str(bundle_keys.private),
            "--release-key",
            str(release / "release.pem"),
            "--store",
            str(fleet["store"]),
            "--checkpoints",
            str(fleet["registry"]),
            "--url-base",
            server.url(""),
            "--broker",
            f"127.0.0.1:{mosquitto.port}",
            "--fleet",
            "survey-a",
            # Two tiny models a few steps apart: F2 and latency are noise here; the gate's edges are tested above.
            "--f2-tolerance",
            "1",
            "--latency-budget",
            "10",
            "--count-clips",
            str(synthetic_dataset),
            *CHAIN,
            *TRAIN,
            "--trainer.limit_train_batches=2",
        ]
        with pytest.raises(SystemExit) as exit_info:
            starfish_cli.main(argv)
        captured = capsys.readouterr()
        assert exit_info.value.code == 0, captured.err[-3000:]
        assert "release gate passed" in captured.out and "released v2" in captured.out
        report = json.loads((out / "report.json").read_text())
        gate = report["gate"]
        assert gate["passed"] and gate["variant"] == "int8_cpu"
        assert (gate["released"]["version"], gate["candidate"]["version"]) == (1, 2)
        assert gate["frames"] == 4 and gate["released"]["latency"]["runs"] == 3
        assert report["released"]["checkpoint"] == str(fleet["registry"] / f"{sha256_file(fleet['v1'])}.ckpt")
        # The candidate started from the released weights and its checkpoint joined the registry under its hash.
        candidate_ckpt = Path(report["training"]["checkpoint"])
        assert (fleet["registry"] / f"{sha256_file(candidate_ckpt)}.ckpt").is_file()
        assert "| candidate | 2 |" in (out / "report.md").read_text()
        # Released: v2 in the store, fetched over HTTP and accepted by the device loader; retained on the fleet topic.
        tar = fleet["store"] / "starfish-cots-2.tar"
        sub = mqtt_subscriber(mosquitto, ["starfish/fleet/+/model"])
        assert wait_until(lambda: sub.on("/fleet/survey-a/model"), 10)
        message = sub.on("/fleet/survey-a/model")[0]
        assert message.retain
        ann = parse_announcement(message.payload, [load_public_key(release / "release.pub")]).announcement
        assert (ann.version, ann.sha256, ann.size) == (2, sha256_file(tar), tar.stat().st_size)
        got = download(ann.url, tmp_path / "device" / "b.tar", size=ann.size, sha256=ann.sha256)
        manifest = load_bundle(got.path, [bundle_keys.public]).manifest
        assert manifest.version == 2 and manifest.training.checkpoint_sha256 == sha256_file(candidate_ckpt)
        # The released candidate carries counting settings calibrated on the job's clips (export all --count-clips).
        counting = manifest.counting_for("int8_cpu")
        assert counting is not None and counting.selected_on == (synthetic_dataset.name,)


def test_retrain_refuses_to_start_from_a_checkpoint_that_is_not_the_released_one(
    fleet, synthetic_dataset, bundle_keys, tmp_path, capsys
) -> None:
    other = tmp_path / "other.ckpt"
    other.write_bytes(fleet["v1"].read_bytes() + b"\0")
    argv = ["retrain", "--data", str(synthetic_dataset), "--out", str(tmp_path / "job"), "--key"]
    argv += [str(bundle_keys.private), "--store", str(fleet["store"]), "--checkpoints", str(fleet["registry"])]
    with pytest.raises(SystemExit) as exit_info:
        # v1 named explicitly: the release test of this module may have put v2 in the store already
        starfish_cli.main([*argv, "--no-release", "--checkpoint", str(other), "--released", str(fleet["v1_tar"])])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # the lines above are INFO logs
    assert exit_info.value.code == 2 and last.startswith("starfish: ") and "Traceback" not in err
    assert "is not the checkpoint starfish-cots v1 was exported from" in last
    with pytest.raises(SystemExit) as exit_info:
        starfish_cli.main([*argv[:-2], "--checkpoints", str(tmp_path / "empty"), "--no-release"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "is not in" in err and "pass --checkpoint" in err
    with pytest.raises(SystemExit) as exit_info:
        starfish_cli.main(
            [*argv[:-4], "--store", str(tmp_path / "nothing"), "--checkpoints", str(tmp_path), "--no-release"]
        )
    assert exit_info.value.code == 2 and "no released bundle in" in capsys.readouterr().err


def test_retrain_trains_with_lightning_ddp_on_two_cpu_processes(fleet, synthetic_dataset, bundle_keys, tmp_path):
    """The multi-GPU cloud job's code path for real: `starfish retrain` under DDP (gloo), 2 ranks, 2 steps each.

    A subprocess because Lightning's DDP launcher starts rank 1 by running the same command line again."""
    import os
    import subprocess
    import sys

    import torch

    out = tmp_path / "ddp"
    argv = [sys.executable, "-m", "starfish_cli", "retrain", "--data", str(synthetic_dataset), "--out", str(out)]
    argv += ["--key", str(bundle_keys.private), "--store", str(fleet["store"]), "--checkpoints", str(fleet["registry"])]
    argv += [
        "--released",
        str(fleet["v1_tar"]),
        "--train-only",
        *TRAIN,
        "--data.train_limit=8",
        "--data.batch_size=2",
        "--trainer.accelerator=cpu",
    ]
    argv += ["--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.num_threads=1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_ALBUMENTATIONS_UPDATE": "1"}
    env.pop("MASTER_PORT", None)
    # The timeout only stops a hung process group (a rank waiting on a dead peer); it is not a speed claim.
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    training = report["training"]
    assert (training["devices"], training["strategy"]) == (2, "ddp")
    # 8 frames, batch 2, split over 2 ranks: 2 optimizer steps per rank, the global step count Lightning reports.
    assert training["metrics"]["global_step"] == 2
    assert "gloo" in proc.stderr or "distributed_backend=gloo" in proc.stderr, proc.stderr[-2000:]
    assert "GLOBAL_RANK: 1" in proc.stderr or "Initializing distributed: GLOBAL_RANK: 1" in proc.stderr
    # Both ranks trained one model: the candidate starts from the released weights and differs from them.
    released = torch.load(fleet["v1"], map_location="cpu", weights_only=True)["state_dict"]
    candidate = torch.load(training["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    key = next(k for k in candidate if k.endswith("fpn.layer_blocks.0.0.weight"))
    assert not torch.equal(released[key], candidate[key])

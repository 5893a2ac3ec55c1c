"""Training unit: fit, overfit, validation hygiene, evaluation schema, checkpoints and bad input.

Everything runs on CPU with a tiny detector (the `smoke` preset) on small generated reef datasets
(tests/helpers/datasets.py), a few steps at a time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_agent.dataset import DatasetError, ReefDataset
from tests.cli_text import flatten
from train.api import configure_wandb_env, evaluate, fine_tune, fit
from train.checkpoint import CheckpointError, load_detector, save_detector
from train.config import ConfigError, TrainConfig, load_config
from train.data import ReefDataModule, collate, split_records
from train.model import ModelConfig, build_detector
from train.module import DetectorModule

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread: on a shared 2-core CI box two OpenMP threads mostly spin-wait on each other."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def smoke_config(root: Path, out: Path, *overrides: str) -> TrainConfig:
    return load_config(
        "smoke",
        overrides=[
            f"--data.root={root}",
            "--data.image_size=[320,180]",
            f"--checkpoint.output_dir={out}",
            "--checkpoint.name=test",
            "--data.check_images=exists",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def trained_run(synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainConfig, dict]:
    """A two-step fit, shared by the tests that need a checkpoint."""
    out = tmp_path_factory.mktemp("runs")
    cfg = smoke_config(
        synthetic_dataset,
        out,
        "--trainer.max_steps=2",
        "--data.train_limit=4",
        f"--checkpoint.early_copy={out / 'early.ckpt'}",
        f"--checkpoint.best_copy={out / 'best.ckpt'}",
    )
    metrics = fit(cfg)
    return cfg, metrics


def test_two_step_fit_writes_config_checkpoints_and_metrics(trained_run: tuple[TrainConfig, dict]) -> None:
    cfg, metrics = trained_run
    run = Path(cfg.checkpoint.output_dir) / cfg.checkpoint.name
    assert metrics["global_step"] == 2
    assert 0.0 <= metrics["val/f2"] <= 1.0
    assert 0.0 <= metrics["val/threshold"] <= 1.01  # 1.01: "predict nothing" beat every threshold
    assert math.isfinite(metrics["train/loss"])
    # The resolved config is saved beside the checkpoints and reloads to the same config.
    assert load_config(config_files=[run / "config.yaml"]) == cfg
    saved = json.loads((run / "metrics.json").read_text())
    best = Path(saved["best_checkpoint"])
    assert best.is_file()
    # Resumable Lightning checkpoint and the slim hand-over copies all load without unpickling code.
    copies = (Path(cfg.checkpoint.early_copy), Path(cfg.checkpoint.best_copy))
    for path in (best, run / "checkpoints" / "last.ckpt", *copies):
        data = torch.load(path, map_location="cpu", weights_only=True)
        assert data["starfish"]["format"] == "starfish-detector"
    resumable = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumable["optimizer_states"] and resumable["lr_schedulers"]
    model, model_cfg, info = load_detector(cfg.checkpoint.best_copy)
    assert model_cfg == cfg.model
    assert not model.training
    assert 0.0 <= info["score_threshold"] <= 1.01


def test_init_weights_starts_from_a_checkpoint(trained_run: tuple[TrainConfig, dict], tmp_path: Path) -> None:
    cfg, _ = trained_run
    second = smoke_config(
        Path(cfg.data.root),
        tmp_path,
        "--trainer.max_steps=1",
        "--data.train_limit=2",
        "--data.val_limit=2",
        f"--checkpoint.init_weights={cfg.checkpoint.best_copy}",
        f"--checkpoint.best_copy={tmp_path / 'second.ckpt'}",
    )
    fit(second)
    first_model, _, _ = load_detector(cfg.checkpoint.best_copy)
    second_model, _, _ = load_detector(tmp_path / "second.ckpt")
    fresh = build_detector(cfg.model).state_dict()
    # One step from the first run's weights stays close to them, far from a fresh initialisation.
    key = "backbone.fpn.layer_blocks.0.0.weight"
    start, after = first_model.state_dict()[key], second_model.state_dict()[key]
    assert (after - start).abs().mean() < 0.2 * (fresh[key] - start).abs().mean()


def test_overfitting_one_batch_drives_the_loss_down(synthetic_dataset: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = smoke_config(synthetic_dataset, tmp_path, "--augment.enabled=false")
    train, _ = split_records(cfg)
    with_starfish = [r for r in train if not r.is_empty][:2]
    module_data = ReefDataModule(cfg, with_starfish, with_starfish)
    module_data.setup("fit")
    images, targets = collate([module_data.train_set[i] for i in range(2)])
    targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
    model = build_detector(cfg.model)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert min(losses[-5:]) < 0.35 * losses[0], losses


def test_validation_does_not_touch_batchnorm_statistics(synthetic_dataset: Path, tmp_path: Path) -> None:
    import lightning as L

    cfg = smoke_config(synthetic_dataset, tmp_path, "--data.val_limit=4")
    module = DetectorModule(cfg.to_dict())
    norms = [m for m in module.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.track_running_stats for m in norms), "the detector should have live BatchNorm"
    before = {k: v.clone() for k, v in module.model.state_dict().items() if "running_" in k or "num_batches" in k}
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.validate(module, datamodule=ReefDataModule(cfg), verbose=False)
    assert "val/f2" in trainer.callback_metrics, "validation did not run"
    after = module.model.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    assert not changed, f"validation changed BatchNorm statistics: {changed[:3]}"
    # The same comparison does see a training-mode forward (so the check above can fail).
    module.model.train()
    images, targets = next(_one_batch(cfg))
    module.model(images, targets)
    assert any(not torch.equal(v, module.model.state_dict()[k]) for k, v in before.items())


def _one_batch(cfg: TrainConfig):
    data = ReefDataModule(cfg)
    data.setup("fit")
    images, targets = collate([data.train_set[i] for i in range(2)])
    yield images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]


def test_evaluation_json_schema(trained_run: tuple[TrainConfig, dict], synthetic_dataset: Path) -> None:
    cfg, _ = trained_run
    model, _, info = load_detector(cfg.checkpoint.best_copy)
    all_records = ReefDataset.open(synthetic_dataset, image_size=(320, 180)).records
    records = [r for r in all_records if r.is_empty][:3] + [r for r in all_records if not r.is_empty][:3]
    with pytest.raises(ValueError, match="all 3 frames are empty"):
        evaluate(model, records[:3])
    result = evaluate(model, records, score_threshold=info["score_threshold"])
    json.loads(json.dumps(result))  # JSON-serialisable as is
    for key in ("f2", "threshold", "map", "map_50", "frames_per_second", "f2_at_given_threshold"):
        assert isinstance(result[key], float), key
    assert 0 <= result["f2"] <= 1 and 0 <= result["map"] <= result["map_50"] + 1e-9 <= 1 + 1e-9
    assert result["frames_per_second"] > 0
    assert sorted(result["per_iou_f2"]) == [f"{0.3 + 0.05 * i:.2f}" for i in range(11)]
    assert result["frames"] == 6
    assert result["boxes"] == sum(len(r.boxes) for r in records)
    assert result["schema_version"] == 1
    buckets = result["recall_by_size"]
    assert sum(b["boxes"] for b in buckets) == result["boxes"]
    assert all(set(b["recall"]) == {"0.30", "0.50", "0.80"} for b in buckets)


def test_fine_tune_accepts_a_modified_detector(synthetic_dataset: Path, tmp_path: Path) -> None:
    cfg = smoke_config(synthetic_dataset, tmp_path, "--data.train_limit=2", "--data.val_limit=2")
    model = build_detector(cfg.model)
    # A shape ModelConfig cannot describe (as after channel pruning): a narrower box head.
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

    in_features = model.roi_heads.box_head.fc6.in_features
    model.roi_heads.box_head = TwoMLPHead(in_features, 32)
    model.roi_heads.box_predictor = FastRCNNPredictor(32, 2)
    before = model.roi_heads.box_head.fc6.weight.detach().clone()
    tuned, summary = fine_tune(model, cfg, epochs=1)
    assert tuned is model and not tuned.training
    assert tuned.roi_heads.box_head.fc6.out_features == 32
    assert not torch.equal(before, tuned.roi_heads.box_head.fc6.weight)
    assert 0.0 <= summary["f2"] <= 1.0 and "map_50" in summary


# ---- bad input --------------------------------------------------------------------------------------------------


def test_unknown_or_mistyped_config_keys_fail_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="bogus"):
        load_config("smoke", overrides=["--data.bogus=1"])
    with pytest.raises(ConfigError, match="optim.lr"):
        load_config("smoke", overrides=["--optim.lr=fast"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  backbone: mobilenet_v3_large_fpn\n  anchor_size: [[8]]\n")
    with pytest.raises(ConfigError, match="anchor_size"):
        load_config(config_files=[bad])
    wrong_backbone = tmp_path / "wrong.yaml"
    wrong_backbone.write_text("model:\n  backbone: resnet18\n")
    with pytest.raises(ConfigError, match="model.backbone"):
        load_config(config_files=[wrong_backbone])
    with pytest.raises(ConfigError, match="unknown preset 'tiny'.*smoke"):
        load_config("tiny")


def test_dotted_overrides_are_parsed_and_checked_like_cli_overrides() -> None:
    from train.config import dotted_overrides, with_dotted

    assert dotted_overrides(["optim.lr=0.0003", "trainer.val_check_interval=300", "data.val_limit=null"]) == {
        "optim.lr": 0.0003,
        "trainer.val_check_interval": 300,
        "data.val_limit": None,
    }
    with pytest.raises(ConfigError, match="bogus"):
        dotted_overrides(["data.bogus=1"])
    with pytest.raises(ConfigError, match="SECTION.KEY=VALUE"):
        dotted_overrides(["lr=1"])
    base = load_config("smoke").to_dict()
    cfg = with_dotted(base, {"data.train_limit": 2, "optim.lr": 0.5})
    assert cfg.data.train_limit == 2 and cfg.optim.lr == 0.5 and cfg.model == load_config("smoke").model
    with pytest.raises(ConfigError, match="optim.lr"):
        with_dotted(base, {"optim.lr": "fast"})
    with pytest.raises(ConfigError, match="bogus"):
        with_dotted(base, {"data.bogus": 1})


def test_cli_reports_a_bad_key_before_training(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from train.cli import app

    result = CliRunner().invoke(app, ["fit", "--preset", "smoke", "--trainer.max_epoch=3"])
    assert result.exit_code == 2
    assert "max_epoch" in result.output


class _Foreign:
    """Any class: unpickling it would run code, which weights-only loading refuses."""


def test_checkpoint_from_another_architecture_fails_clearly(tmp_path: Path) -> None:
    cfg = ModelConfig(**{**load_config("smoke").model.to_dict(), "anchor_sizes": ((8, 16, 32, 64),)})
    model = build_detector(cfg)
    info = {
        "format": "starfish-detector",
        "format_version": 1,
        "architecture": "model_config",
        "model_config": cfg.to_dict(),
    }
    good = save_detector(model, info, tmp_path / "good.ckpt")
    load_detector(good)  # sanity: the untouched file loads
    # Weights of one architecture, config of another (wider FPN): a clear message, not a state-dict dump.
    lying = save_detector(model, {**info, "model_config": {**cfg.to_dict(), "fpn_channels": 128}}, tmp_path / "x.ckpt")
    with pytest.raises(CheckpointError, match="does not fit") as caught:
        load_detector(lying)
    assert len(str(caught.value)) < 600
    # A caller that expects another architecture is told which fields differ.
    with pytest.raises(CheckpointError, match="different architecture: backbone='mobilenet_v3_large_fpn'"):
        load_detector(good, expected=ModelConfig(backbone="resnet50_fpn"))
    # Not ours at all: a bare torchvision state dict, and a file that needs unpickling code.
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="not a starfish-edge detector checkpoint"):
        load_detector(tmp_path / "bare.pt")
    torch.save({"starfish": _Foreign(), "state_dict": {}}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="not a readable weights-only checkpoint"):
        load_detector(tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_detector(tmp_path / "missing.ckpt")


def test_empty_and_all_empty_splits_error_clearly(
    make_synthetic_dataset, synthetic_dataset: Path, tmp_path: Path
) -> None:
    all_empty = make_synthetic_dataset(videos=2, frames=4, empty_fraction=1.0)
    records = ReefDataset.open(all_empty, image_size=(320, 180)).records
    assert records and all(r.is_empty for r in records)
    with pytest.raises(DatasetError, match="frames of the training split are empty"):
        split_records(smoke_config(all_empty, tmp_path))
    with pytest.raises(DatasetError, match="not in dataset"):
        split_records(smoke_config(all_empty, tmp_path, "--data.val=[42]"))
    with pytest.raises(DatasetError, match="data.root is not set"):
        split_records(load_config("smoke"))
    with_starfish = [r for r in ReefDataset.open(synthetic_dataset, image_size=(320, 180)).records if not r.is_empty]
    with pytest.raises(DatasetError, match="the validation split is empty"):
        ReefDataModule(smoke_config(synthetic_dataset, tmp_path), with_starfish[:1], []).setup("fit")


def test_wandb_is_offline_without_an_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert configure_wandb_env() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert configure_wandb_env() == "online"


def test_capped_validation_spans_the_whole_video(synthetic_dataset: Path, tmp_path: Path) -> None:
    _, val = split_records(smoke_config(synthetic_dataset, tmp_path, "--data.val_limit=4"))
    frames = [r.video_frame for r in val]
    assert len(val) == 4 and frames[0] == 0 and frames[-1] == 15
    assert np.all(np.diff(frames) > 0)


def test_wandb_logger_runs_offline_and_logs_example_images(
    synthetic_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = smoke_config(
        synthetic_dataset,
        tmp_path,
        "--logger.wandb=true",
        "--data.train_limit=2",
        "--data.val_limit=4",
        "--logger.image_every_n_val=1",
    )
    fit(cfg)
    runs = list((tmp_path / "test" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "W&B should have written exactly one offline run (and never asked for a login)"
    assert list(runs[0].glob("files/media/images/val/examples_*.png")), "no example images with boxes logged"


def test_cli_evaluate_and_predict(
    trained_run: tuple[TrainConfig, dict], synthetic_dataset: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from train.cli import app

    cfg, _ = trained_run
    runner = CliRunner()
    out = tmp_path / "eval.json"
    result = runner.invoke(
        app,
        [
            "evaluate",
            cfg.checkpoint.best_copy,
            "--data",
            str(synthetic_dataset),
            "--video",
            "2",
            "--image-width",
            "320",
            "--image-height",
            "180",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert written["videos"] == [2] and written["frames"] == 16 and 0 <= written["f2"] <= 1
    frames = synthetic_dataset / "train_images" / "video_2"
    result = runner.invoke(
        app, ["predict", cfg.checkpoint.best_copy, str(frames), "--out", str(tmp_path / "pred"), "--threshold", "0.0"]
    )
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "pred").glob("*_pred.jpg"))) == 16
    detections = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert detections["threshold"] == 0.0 and len(detections["frames"]) == 16
    bad = runner.invoke(app, ["evaluate", str(tmp_path / "nope.ckpt"), "--data", str(synthetic_dataset)])
    assert bad.exit_code == 2 and "does not exist" in flatten(bad.output) and "nope.ckpt" in flatten(bad.output)


def test_out_of_distribution_set_drives_selection_and_both_are_logged(
    synthetic_dataset: Path, make_synthetic_dataset, tmp_path: Path
) -> None:
    # A second, differently seeded set stands in for the out-of-distribution renderer here; the mechanism is the
    # same for any root in the Kaggle layout.
    other = make_synthetic_dataset(seed=99, videos=1, frames=6)
    cfg = smoke_config(
        synthetic_dataset,
        tmp_path,
        "--trainer.max_steps=2",
        "--data.train_limit=4",
        f"--data.ood_root={other}",
        f"--data.extra_roots=[{other}]",
    )
    uncapped = smoke_config(synthetic_dataset, tmp_path, f"--data.extra_roots=[{other}]", "--data.train_limit=null")
    train, _ = split_records(uncapped)
    assert sum(str(r.image_path).startswith(str(other)) for r in train) == 6  # every extra-root frame trains
    metrics = fit(cfg)
    assert "val/f2" in metrics and "val_ood/f2" in metrics
    assert metrics["val/select_f2"] == pytest.approx(metrics["val_ood/f2"])
    assert metrics["best_threshold"] == pytest.approx(metrics["val_ood/threshold"])
    info = torch.load(metrics_best(tmp_path), map_location="cpu", weights_only=True)["starfish"]
    assert info["val"]["selected_on"] == "out_of_distribution"
    assert set(info["val"]["ood"]) >= {"f2", "threshold", "map_50"}


def metrics_best(out: Path) -> Path:
    return Path(json.loads((out / "test" / "metrics.json").read_text())["best_checkpoint"])

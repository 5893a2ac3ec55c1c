"""Pure training entry points (STYLE habit 9): tests and other units call these; `train.cli` only wraps them.

* ``fit(cfg) -> metrics``: train from a :class:`TrainConfig`, save the resolved config, checkpoints (best by
  validation F2, last, resumable) and ``metrics.json`` under ``<output_dir>/<name>/``.
* ``fine_tune(model, cfg, epochs) -> (model, metrics)``: continue training an existing detector instance (for
  example a channel-pruned one whose shapes no longer follow ModelConfig) with the same Lightning trainer.
* ``evaluate(model, records) -> dict``: competition F2, per-IoU F2, mAP, frames/s (see train.evaluation).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

from train.checkpoint import load_detector, slim_copy
from train.config import TrainConfig, config_from_dict, dump_yaml
from train.data import ReefDataModule
from train.evaluation import evaluate
from train.module import DetectorModule

logger = logging.getLogger(__name__)


def _lightning_logs_once() -> None:
    """`import lightning` gives its package logger a console handler of its own, on top of the root handler the
    command line configures, so every Lightning line would print twice: where the root logger has a handler, leave
    the printing to it."""
    if logging.getLogger().handlers:
        lightning_logger = logging.getLogger("lightning")
        for handler in list(lightning_logger.handlers):
            lightning_logger.removeHandler(handler)


_lightning_logs_once()

__all__ = ["fit", "fine_tune", "evaluate", "run_dir", "configure_wandb_env"]


def configure_wandb_env() -> str:
    """Offline unless an API key is present, and never an interactive prompt; returns the mode in use."""
    if not os.environ.get("WANDB_API_KEY"):
        os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    mode = os.environ.get("WANDB_MODE", "online")
    return mode


def run_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.checkpoint.output_dir) / cfg.checkpoint.name


class StarfishCheckpoint(ModelCheckpoint):
    """Best-by-F2 checkpointing that also hands slim copies to the export side.

    ``early_copy`` receives this run's first checkpoint (a weak but usable model, early; an older file there is
    replaced); ``best_copy`` follows the best one as it improves.
    """

    def __init__(self, early_copy: str | None, best_copy: str | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.early_copy = early_copy
        self.best_copy = best_copy
        self._copied_best = ""
        self._copied_early = False

    def _maybe_copy(self, trainer: L.Trainer) -> None:
        if trainer.global_rank != 0 or not self.best_model_path or not Path(self.best_model_path).is_file():
            return
        if self.early_copy and not self._copied_early:
            slim_copy(self.best_model_path, self.early_copy)
            self._copied_early = True
        if self.best_copy and self.best_model_path != self._copied_best:
            slim_copy(self.best_model_path, self.best_copy)
            self._copied_best = self.best_model_path

    # Lightning saves from different hooks depending on when validation runs: look after each of them.
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._maybe_copy(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._maybe_copy(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        self._maybe_copy(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_end(trainer, pl_module)
        self._maybe_copy(trainer)


def _loggers(cfg: TrainConfig, directory: Path) -> list:
    loggers: list = []
    if cfg.logger.csv:
        from lightning.pytorch.loggers import CSVLogger

        loggers.append(CSVLogger(save_dir=str(directory), name="csv", version=""))
    if cfg.logger.wandb:
        mode = configure_wandb_env()
        from lightning.pytorch.loggers import WandbLogger

        logger.info("W&B logging %s (project %s)", mode, cfg.logger.project)
        loggers.append(
            WandbLogger(
                project=cfg.logger.project,
                entity=cfg.logger.entity,
                name=cfg.checkpoint.name,
                tags=list(cfg.logger.tags),
                save_dir=str(directory),
                offline=mode == "offline",
                config=cfg.to_dict(),
            )
        )
    return loggers


def _trainer(cfg: TrainConfig, directory: Path, callbacks: list, loggers: list | bool, **overrides: Any) -> L.Trainer:
    t = cfg.trainer
    kwargs: dict[str, Any] = {
        "max_epochs": t.max_epochs,
        "max_steps": t.max_steps,
        "accelerator": t.accelerator,
        "devices": t.devices,
        "num_nodes": t.num_nodes,
        "strategy": t.strategy,
        "precision": t.precision,
        "log_every_n_steps": t.log_every_n_steps,
        "val_check_interval": t.val_check_interval,
        "check_val_every_n_epoch": t.check_val_every_n_epoch,
        "limit_train_batches": t.limit_train_batches,
        "limit_val_batches": t.limit_val_batches,
        "num_sanity_val_steps": t.num_sanity_val_steps,
        "gradient_clip_val": t.gradient_clip_val,
        "accumulate_grad_batches": t.accumulate_grad_batches,
        "deterministic": t.deterministic,
        "enable_progress_bar": t.enable_progress_bar,
        "enable_model_summary": False,
        "default_root_dir": str(directory),
        "callbacks": callbacks,
        "logger": loggers,
    }
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def _float_metrics(trainer: L.Trainer) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in trainer.callback_metrics.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def _prepare(cfg: TrainConfig | dict[str, Any]) -> TrainConfig:
    if isinstance(cfg, dict):
        cfg = config_from_dict(cfg)
    # Round-trip through the validating parser even for a dataclass built in code: wrong types fail here too.
    cfg = config_from_dict(cfg.to_dict())
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    return cfg


def fit(cfg: TrainConfig | dict[str, Any]) -> dict[str, float]:
    """Train the detector described by ``cfg``; returns the final and best validation metrics as floats."""
    cfg = _prepare(cfg)
    directory = run_dir(cfg)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(dump_yaml(cfg))
    datamodule = ReefDataModule(cfg)
    # Fail on a bad dataset or split before building the model or starting loggers.
    datamodule.setup("fit")
    module = DetectorModule(cfg.to_dict())
    if cfg.checkpoint.init_weights:
        start, _, start_info = load_detector(cfg.checkpoint.init_weights, expected=cfg.model)
        module.model.load_state_dict(start.state_dict())
        logger.info(
            "starting from %s (validation F2 %.4f there)",
            cfg.checkpoint.init_weights,
            float(start_info.get("best_val_f2", float("nan"))),
        )
    checkpoint = StarfishCheckpoint(
        early_copy=cfg.checkpoint.early_copy,
        best_copy=cfg.checkpoint.best_copy,
        dirpath=str(directory / "checkpoints"),
        filename="best-{step}",
        monitor="val/select_f2",
        mode="max",
        save_top_k=cfg.checkpoint.save_top_k,
        save_last=cfg.checkpoint.save_last,
        auto_insert_metric_name=False,
    )
    loggers = _loggers(cfg, directory)
    callbacks: list = [checkpoint]
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer = _trainer(cfg, directory, callbacks, loggers or False)
    logger.info("training %s into %s", cfg.model.backbone, directory)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.checkpoint.resume)
    if not checkpoint.best_model_path and trainer.global_rank == 0:
        # max_steps ended training before any validation: score the final weights once and keep them as "best".
        trainer.validate(module, datamodule=datamodule, verbose=False)
        final = directory / "checkpoints" / "final.ckpt"
        trainer.save_checkpoint(final)
        checkpoint.best_model_path = str(final)
        checkpoint.best_model_score = torch.tensor(module.best_f2)
        if cfg.checkpoint.early_copy and not checkpoint._copied_early:
            slim_copy(final, cfg.checkpoint.early_copy)
    metrics = _float_metrics(trainer)
    metrics["best_val_f2"] = float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else -1.0
    metrics["best_threshold"] = float(module.best_threshold)
    metrics["global_step"] = float(trainer.global_step)
    (directory / "metrics.json").write_text(
        json.dumps({**metrics, "best_checkpoint": checkpoint.best_model_path}, indent=2, sort_keys=True)
    )
    if cfg.checkpoint.best_copy and checkpoint.best_model_path:
        slim_copy(checkpoint.best_model_path, cfg.checkpoint.best_copy)
    logger.info("best validation F2 %.4f: %s", metrics["best_val_f2"], checkpoint.best_model_path)
    return metrics


FINE_TUNE_SELECT = ("val/f2", "val/select_f2")


class _KeepBestWeights(L.Callback):
    """Keeps an in-memory copy of the weights at the best validation of ``monitor`` and puts them back at the end:
    a pruned model fine-tuned for a fixed step budget should ship its best state, not its last."""

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor
        self.best: float | None = None
        self.best_step: int | None = None
        self.best_val: dict[str, Any] = {}
        self._state: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None:
            return
        if self.best is None or float(value) > self.best:
            self.best, self.best_step = float(value), trainer.global_step
            self.best_val = dict(getattr(pl_module, "last_val", {}))
            self._state = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}
            logger.info("fine-tune: new best %s %.4f at step %d", self.monitor, self.best, self.best_step)

    def restore(self, model: torch.nn.Module) -> None:
        if self._state is not None:
            model.load_state_dict(self._state)


def fine_tune(
    model: torch.nn.Module,
    cfg: TrainConfig | dict[str, Any],
    epochs: int,
    *,
    max_steps: int | None = None,
    keep_best: str | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Fine-tune an existing detector in place for ``epochs`` (or exactly ``max_steps`` optimiser steps) with the
    same data, losses and validation as `fit`.

    The model may be structurally modified (pruned channels): nothing is rebuilt from ModelConfig, and nothing is
    written to disk besides Lightning's own scratch directory. ``keep_best`` (``val/f2``: in-distribution,
    ``val/select_f2``: what `fit` selects on) returns the weights of the best validation instead of the last.
    Returns the model (eval mode) and that validation's summary (``f2``, ``threshold``, ``per_iou_f2``, ``map``,
    ``map_50``, plus ``step``).
    """
    if max_steps is None and epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if keep_best is not None and keep_best not in FINE_TUNE_SELECT:
        raise ValueError(f"keep_best must be one of {', '.join(FINE_TUNE_SELECT)}, got {keep_best!r}")
    cfg = _prepare(cfg)
    cfg.trainer.max_epochs = epochs if max_steps is None else -1
    cfg.trainer.max_steps = -1 if max_steps is None else max_steps
    if max_steps is not None and isinstance(cfg.trainer.val_check_interval, int):
        cfg.trainer.val_check_interval = min(cfg.trainer.val_check_interval, max_steps)
    directory = run_dir(cfg) / "fine_tune"
    datamodule = ReefDataModule(cfg)
    datamodule.setup("fit")
    module = DetectorModule(cfg.to_dict(), model=model)
    keeper = _KeepBestWeights(keep_best) if keep_best else None
    trainer = _trainer(
        cfg,
        directory,
        [keeper] if keeper else [],
        False,
        enable_checkpointing=False,
        max_epochs=cfg.trainer.max_epochs,
        max_steps=cfg.trainer.max_steps,
    )
    trainer.fit(module, datamodule=datamodule)
    if not module.last_val:  # no validation fell inside the budget: score the result once
        trainer.validate(module, datamodule=datamodule, verbose=False)
    summary = {**module.last_val, "step": trainer.global_step}
    if keeper is not None and keeper.best_step is not None and keeper.best_step != trainer.global_step:
        keeper.restore(model)
        summary = {**keeper.best_val, "step": keeper.best_step}
        logger.info("fine-tune: kept the step-%d weights (%s %.4f)", keeper.best_step, keep_best, keeper.best)
    model.eval()
    return model, summary

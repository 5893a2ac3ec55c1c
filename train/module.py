"""The LightningModule: training/validation steps and optimisers only; the network comes from `build_detector`.

torchvision detectors return losses in train mode and predictions in eval mode. Training steps therefore only
compute losses (one forward each), and validation only predicts: Lightning puts the module in eval mode for
validation, so BatchNorm uses (and does not update) its running statistics. Validation scores F2 with the
competition metric (edge_agent.metrics) on every held-out frame, empty frames included.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import numpy as np
import torch

from edge_agent import metrics as reef_metrics
from train.config import TrainConfig, config_from_dict
from train.model import CLASSES, backbone_weights_provenance, build_detector

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "starfish-detector"
CHECKPOINT_FORMAT_VERSION = 1


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def summarise_predictions(
    predictions: list[tuple[np.ndarray, np.ndarray]], ground_truths: list[np.ndarray]
) -> dict[str, Any]:
    """F2 at its best score threshold, per-IoU F2 and COCO mAP from per-frame (boxes, scores) in source pixels."""
    search = reef_metrics.best_f2_threshold(predictions, ground_truths)
    coco = reef_metrics.coco_map(predictions, ground_truths)
    return {
        "f2": float(search.f2),
        "threshold": float(search.threshold),
        "per_iou_f2": {f"{k:.2f}": float(v) for k, v in sorted(search.per_iou.items())},
        "map": float(coco["map"]),
        "map_50": float(coco["map_50"]),
        **operating_point(search.result, len(predictions)),
    }


def operating_point(result: reef_metrics.F2Result, frames: int) -> dict[str, float]:
    """False positives per frame and precision / recall at IoU 0.5 of one thresholded F2 result."""
    tp, fp, fn = result.tp[0.5], result.fp[0.5], result.fn[0.5]
    return {
        "false_positives_per_frame": fp / max(1, frames),
        "precision_iou50": tp / (tp + fp) if tp + fp else 1.0,
        "recall_iou50": tp / (tp + fn) if tp + fn else 1.0,
    }


@contextmanager
def native_size(model: torch.nn.Module, images: list[torch.Tensor] | None) -> Iterator[None]:
    """Let the detector's transform take ``images`` at their own size (training crops are already at the working
    scale; its usual short-side resize would blow them up). Restores the deployment sizes on exit."""
    transform = getattr(model, "transform", None)
    if images is None or transform is None:
        yield
        return
    saved = (transform.min_size, transform.max_size)
    short = min(min(img.shape[-2:]) for img in images)
    long = max(max(img.shape[-2:]) for img in images)
    transform.min_size, transform.max_size = (int(short),), int(max(long, saved[1]))
    try:
        yield
    finally:
        transform.min_size, transform.max_size = saved


class DetectorModule(L.LightningModule):
    def __init__(self, train_config: dict[str, Any], model: torch.nn.Module | None = None) -> None:
        super().__init__()
        # Plain dicts only in hparams: checkpoints must load with torch.load(weights_only=True).
        self.save_hyperparameters({"train_config": train_config})
        self.cfg: TrainConfig = config_from_dict(train_config)
        # `model` is given when fine-tuning a modified (e.g. channel-pruned) detector whose shapes no longer
        # follow ModelConfig; otherwise the config builds it.
        self.custom_architecture = model is not None
        self.model = model if model is not None else build_detector(self.cfg.model)
        # Read (and hashed) once: every checkpoint records where pretrained backbone weights came from.
        self.backbone_weights = backbone_weights_provenance(self.cfg.model)
        self._val_predictions: list[tuple[np.ndarray, np.ndarray]] = []
        self._val_truths: list[np.ndarray] = []
        self._ood_predictions: list[tuple[np.ndarray, np.ndarray]] = []
        self._ood_truths: list[np.ndarray] = []
        self._val_examples: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._val_count = 0
        self.best_f2 = -1.0
        self.best_threshold = 0.5
        self.last_val: dict[str, Any] = {}

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return self.model(images)

    # ---- training -------------------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        train_set = getattr(datamodule, "train_set", None)
        if train_set is not None:
            # Decides the augmentation seeds of this epoch; DataLoader workers are forked after this hook.
            train_set.epoch = self.current_epoch

    def training_step(self, batch: tuple[list[torch.Tensor], list[dict]], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        with native_size(self.model, images if self.cfg.augment.train_crop else None):
            losses = self.model(images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        loss = sum(losses.values())
        batch_size = len(images)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        for name, value in losses.items():
            self.log(f"train/{name}", value, batch_size=batch_size)
        dropped = sum(int(t["dropped"]) for t in targets)
        self.log("train/boxes_dropped_by_augment", float(dropped), reduce_fx="sum", batch_size=batch_size)
        return loss

    # ---- validation -----------------------------------------------------------------------------------------
    # Validation set 0 is the in-distribution held-out split; set 1, when configured (data.ood_root), is the
    # out-of-distribution renderer. Selection (checkpoint and score threshold) uses set 1 when it exists.
    def on_validation_epoch_start(self) -> None:
        self._val_predictions, self._val_truths, self._val_examples = [], [], []
        self._ood_predictions, self._ood_truths = [], []

    def validation_step(
        self, batch: tuple[list[torch.Tensor], list[dict]], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        images, targets = batch
        # Eval mode (set by Lightning): predictions only, BatchNorm reads its running statistics.
        outputs = self.model(images)
        if dataloader_idx == 0:
            predictions, truths = self._val_predictions, self._val_truths
        else:
            predictions, truths = self._ood_predictions, self._ood_truths
        for image, target, output in zip(images, targets, outputs, strict=True):
            scale = float(target["scale"])
            boxes = _to_numpy(output["boxes"]).reshape(-1, 4)
            scores = _to_numpy(output["scores"]).reshape(-1)
            predictions.append((boxes / scale, scores))
            truths.append(_to_numpy(target["source_boxes"]).reshape(-1, 4))
            if dataloader_idx == 0 and len(self._val_examples) < self.cfg.logger.num_images and len(target["boxes"]):
                picture = (image.detach().cpu().permute(1, 2, 0).numpy() * 255).astype(np.uint8)
                self._val_examples.append((picture, _to_numpy(target["boxes"]), boxes, scores))

    def _gather(self, predictions: list, truths: list) -> tuple[list, list]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            if world > 1:
                gathered: list[Any] = [None] * world
                torch.distributed.all_gather_object(gathered, (predictions, truths))
                predictions = [p for part in gathered for p in part[0]]
                truths = [t for part in gathered for t in part[1]]
        return predictions, truths

    def _log_summary(self, prefix: str, summary: dict[str, Any], frames: int) -> None:
        self.log(f"{prefix}/f2", summary["f2"], prog_bar=True, batch_size=frames, sync_dist=False)
        self.log(f"{prefix}/threshold", summary["threshold"], batch_size=frames)
        self.log(f"{prefix}/map", summary["map"], batch_size=frames)
        self.log(f"{prefix}/map_50", summary["map_50"], batch_size=frames)
        for iou, value in summary["per_iou_f2"].items():
            self.log(f"{prefix}/f2_iou{iou}", value, batch_size=frames)

    def on_validation_epoch_end(self) -> None:
        predictions, truths = self._gather(self._val_predictions, self._val_truths)
        if not predictions or self.trainer.sanity_checking:
            return
        summary = summarise_predictions(predictions, truths)
        self._log_summary("val", summary, len(predictions))
        selected, selected_on = summary, "in_distribution"
        ood_predictions, ood_truths = self._gather(self._ood_predictions, self._ood_truths)
        if ood_predictions:
            ood = summarise_predictions(ood_predictions, ood_truths)
            self._log_summary("val_ood", ood, len(ood_predictions))
            summary = {**summary, "ood": ood}
            selected, selected_on = ood, "out_of_distribution"
        summary["selected_on"] = selected_on
        self.last_val = summary
        # What checkpoint selection monitors: the out-of-distribution F2 when there is one.
        self.log("val/select_f2", selected["f2"], batch_size=len(predictions), sync_dist=False)
        if selected["f2"] > self.best_f2:
            self.best_f2, self.best_threshold = selected["f2"], selected["threshold"]
        logger.info(
            "validation at step %d: in-distribution F2 %.4f (threshold %.2f), mAP@.5 %.4f on %d frames",
            self.global_step,
            summary["f2"],
            summary["threshold"],
            summary["map_50"],
            len(predictions),
        )
        if "ood" in summary:
            ood = summary["ood"]
            logger.info(
                "validation at step %d: out-of-distribution F2 %.4f (threshold %.2f), mAP@.5 %.4f on %d frames",
                self.global_step,
                ood["f2"],
                ood["threshold"],
                ood["map_50"],
                len(ood_predictions),
            )
        self._log_images(summary["threshold"])
        self._val_count += 1

    def _log_images(self, threshold: float) -> None:
        every = self.cfg.logger.image_every_n_val
        if not every or self._val_count % every or not self._val_examples:
            return
        from lightning.pytorch.loggers import WandbLogger

        wandb_loggers = [lg for lg in self.loggers if isinstance(lg, WandbLogger)]
        if not wandb_loggers:
            return
        from train.draw import draw_boxes

        pictures = [
            draw_boxes(draw_boxes(img, gt, colour=(0, 255, 0)), boxes[scores >= threshold], scores[scores >= threshold])
            for img, gt, boxes, scores in self._val_examples
        ]
        for lg in wandb_loggers:
            lg.log_image(
                key="val/examples",
                images=pictures,
                step=self.global_step,
                caption=["green: truth, red: prediction"] * len(pictures),
            )

    # ---- optimisation ---------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        o = self.cfg.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        if o.name == "sgd":
            optimizer = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        else:
            optimizer = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(o.warmup_steps, max(0, total - 1))
        floor = o.final_lr_fraction
        cosine = o.scheduler == "cosine"

        # A plain function, not an object: LambdaLR then stores nothing pickled in the checkpoint.
        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            if not cosine:
                return 1.0
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- checkpoints ----------------------------------------------------------------------------------------
    def starfish_info(self) -> dict[str, Any]:
        """What `train.checkpoint.load_detector` needs besides the weights; plain types only."""
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "architecture": "custom" if self.custom_architecture else "model_config",
            "classes": list(CLASSES),
            "model_config": self.cfg.to_dict()["model"],
            "train_config": self.cfg.to_dict(),
            "config_digest": self.cfg.digest(),
            "score_threshold": float(self.best_threshold),
            "best_val_f2": float(self.best_f2),
            "val": dict(self.last_val),
            "global_step": int(self.global_step),
            "backbone_weights": self.backbone_weights,
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["starfish"] = self.starfish_info()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        info = checkpoint.get("starfish", {})
        self.best_f2 = float(info.get("best_val_f2", -1.0))
        self.best_threshold = float(info.get("score_threshold", 0.5))

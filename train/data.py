"""Torch side of the data: a lazily decoding Dataset over `FrameRecord`s and a LightningDataModule.

Reading, validating and splitting rows is `edge_agent.dataset.ReefDataset`'s job (torch-free, shared with the
benchmarks); this module only decodes frames in `__getitem__`, resizes them to the detector's working size,
augments training frames and hands out (images, targets) batches. Empty frames stay in both splits.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import cv2
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from edge_agent.dataset import DatasetError, FrameRecord, ReefDataset, load_image
from train.config import AugmentConfig, TrainConfig
from train.transforms import Augmenter, clip_and_filter, resize_to_working, sample_seed

logger = logging.getLogger(__name__)


class FrameDataset(Dataset):
    """Frames as (CHW float tensor in [0, 1], target dict); the image is decoded only when asked for."""

    def __init__(
        self,
        records: Sequence[FrameRecord],
        min_size: int,
        max_size: int,
        augment: AugmentConfig | None = None,
    ) -> None:
        self.records = list(records)
        self.min_size = min_size
        self.max_size = max_size
        self.augmenter = Augmenter(augment) if augment is not None and augment.enabled else None
        self.seed = augment.seed if augment is not None else 0
        # Set by the data module at each epoch start; workers are re-created per epoch (not persistent) so they see it.
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        record = self.records[index]
        rgb = cv2.cvtColor(load_image(record.image_path), cv2.COLOR_BGR2RGB)
        image, boxes, scale = resize_to_working(rgb, record.boxes, self.min_size, self.max_size)
        height, width = image.shape[:2]
        dropped = 0
        if self.augmenter is not None:
            out = self.augmenter(image, boxes, sample_seed(self.seed, self.epoch, index))
            image, boxes, dropped = out.image, out.boxes, out.dropped
        else:
            boxes, keep = clip_and_filter(boxes, width, height, min_side=1.0)
            dropped = int((~keep).sum())
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
        target = {
            "boxes": torch.from_numpy(boxes.astype(np.float32)).reshape(-1, 4),
            "labels": torch.ones(len(boxes), dtype=torch.int64),
            # Ground truth in source pixels for the metrics, and the factor to map predictions back.
            "source_boxes": torch.from_numpy(record.boxes.astype(np.float32)).reshape(-1, 4),
            "scale": torch.tensor(scale, dtype=torch.float32),
            "index": torch.tensor(index, dtype=torch.int64),
            "dropped": torch.tensor(dropped, dtype=torch.int64),
        }
        return tensor, target


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Detection batches are lists: frames keep their own sizes and box counts."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def even_subset(records: list[FrameRecord], limit: int | None) -> list[FrameRecord]:
    """At most ``limit`` records with an even stride, so a capped split still spans every video end to end."""
    if limit is None or limit >= len(records):
        return records
    if limit <= 0:
        raise DatasetError(f"frame limit must be positive, got {limit}")
    picks = np.linspace(0, len(records) - 1, limit).round().astype(int)
    return [records[i] for i in sorted(set(picks.tolist()))]


def check_split(records: Sequence[FrameRecord], name: str) -> None:
    """An empty split, or one without a single box, cannot train or be scored: say so before training starts."""
    if not records:
        raise DatasetError(f"the {name} split is empty")
    if all(r.is_empty for r in records):
        raise DatasetError(f"all {len(records)} frames of the {name} split are empty (no starfish boxes)")


def _refuse_validation_only(root: str, key: str) -> None:
    # A model that has trained on the out-of-distribution set no longer has an out-of-distribution score.
    from train.ood import is_validation_only

    if is_validation_only(root):
        raise DatasetError(
            f"{root} ({key}) is a validation-only out-of-distribution set (`starfish data ood`): "
            "never train on it; pass it as data.ood_root"
        )


def split_records(cfg: TrainConfig) -> tuple[list[FrameRecord], list[FrameRecord]]:
    """Open ``cfg.data.root`` and split it by video or sequence (default held out: the last one)."""
    d = cfg.data
    if not d.root:
        raise DatasetError("data.root is not set: point it at a dataset directory (train.csv + train_images/)")
    for key, path in (("data.root", d.root), *(("data.extra_roots", extra) for extra in d.extra_roots)):
        _refuse_validation_only(path, key)
    dataset = ReefDataset.open(d.root, image_size=tuple(d.image_size), check_images=d.check_images)
    if not dataset.records:
        raise DatasetError(f"{d.root} holds no usable frames ({dataset.report.summary()})")
    val_ids = list(d.val) or [dataset.groups(d.split_by)[-1]]
    train, val = dataset.split(by=d.split_by, val=val_ids)
    for extra in d.extra_roots:
        more = ReefDataset.open(extra, image_size=tuple(d.image_size), check_images=d.check_images)
        if not more.records:
            raise DatasetError(f"{extra} (data.extra_roots) holds no usable frames ({more.report.summary()})")
        logger.info("training also on every frame of %s: %d frames", extra, len(more.records))
        train = [*train, *more.records]
    train = even_subset(train, d.train_limit)
    val = even_subset(val, d.val_limit)
    check_split(train, "training")
    check_split(val, "validation")
    logger.info(
        "split by %s, validation %s: %d training frames (%d empty), %d validation frames (%d empty)",
        d.split_by,
        val_ids,
        len(train),
        sum(r.is_empty for r in train),
        len(val),
        sum(r.is_empty for r in val),
    )
    return train, val


def ood_records(cfg: TrainConfig) -> list[FrameRecord]:
    """Every frame (evenly capped by ``data.ood_limit``) of the out-of-distribution set, or [] when none is set."""
    d = cfg.data
    if not d.ood_root:
        return []
    dataset = ReefDataset.open(d.ood_root, image_size=tuple(d.image_size), check_images=d.check_images)
    records = even_subset(list(dataset.records), d.ood_limit)
    check_split(records, "out-of-distribution validation")
    logger.info("out-of-distribution validation: %d frames of %s", len(records), d.ood_root)
    return records


class ReefDataModule(L.LightningDataModule):
    def __init__(
        self,
        cfg: TrainConfig,
        train_records: Sequence[FrameRecord] | None = None,
        val_records: Sequence[FrameRecord] | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self._given = (train_records, val_records)
        self.train_set: FrameDataset | None = None
        self.val_set: FrameDataset | None = None
        self.ood_set: FrameDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, val = self._given
        if train is None or val is None:
            train, val = split_records(self.cfg)
        check_split(train, "training")
        check_split(val, "validation")
        m = self.cfg.model
        self.train_set = FrameDataset(train, m.min_size, m.max_size, augment=self.cfg.augment)
        self.val_set = FrameDataset(val, m.min_size, m.max_size, augment=None)
        ood = ood_records(self.cfg)
        self.ood_set = FrameDataset(ood, m.min_size, m.max_size, augment=None) if ood else None

    def _loader(self, dataset: FrameDataset, batch_size: int, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.cfg.seed + dataset.epoch)
        workers = self.cfg.data.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=workers,
            collate_fn=collate,
            generator=generator,
            # Not persistent: workers are re-forked each epoch, so they see the new epoch number (augment seed).
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None
        if self.trainer is not None:
            self.train_set.epoch = self.trainer.current_epoch
        return self._loader(self.train_set, self.cfg.data.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The in-distribution held-out split, then (when configured) the out-of-distribution set."""
        assert self.val_set is not None
        loaders = [self._loader(self.val_set, self.cfg.data.val_batch_size, shuffle=False)]
        if self.ood_set is not None:
            loaders.append(self._loader(self.ood_set, self.cfg.data.val_batch_size, shuffle=False))
        return loaders if len(loaders) > 1 else loaders[0]

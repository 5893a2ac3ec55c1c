"""Image + box transforms: resize to the detector's working size, then underwater-video augmentation.

Every transform takes and returns (image, boxes) together, so boxes always move with pixels; boxes that a
geometric op cuts below ``min_visibility`` of their area (or below ``min_box_side`` px) are dropped and *counted*,
never lost silently. albumentations keeps its own random state, so reproducibility comes from reseeding the
pipeline per sample from (seed, epoch, index), not from global seeds.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass

import cv2
import numpy as np

from train.config import AugmentConfig

logger = logging.getLogger(__name__)


def working_scale(width: int, height: int, min_size: int, max_size: int) -> float:
    """The scale torchvision's GeneralizedRCNNTransform would apply (short side to min_size, long side capped)."""
    return min(min_size / min(width, height), max_size / max(width, height))


def resize_to_working(
    image: np.ndarray, boxes: np.ndarray, min_size: int, max_size: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Resize once, with area interpolation, to the size the detector works at (it then leaves it unchanged).

    Doing it here rather than inside the model keeps augmentation cheap and matches the edge side, which
    letterboxes frames with the same interpolation (edge_agent.preprocess.letterbox).
    """
    height, width = image.shape[:2]
    scale = working_scale(width, height, min_size, max_size)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    if (new_w, new_h) != (width, height):
        interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
        image = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    sx, sy = new_w / width, new_h / height
    scaled = boxes.astype(np.float32).reshape(-1, 4) * np.array([sx, sy, sx, sy], dtype=np.float32)
    return image, scaled, float(scale)


def clip_and_filter(boxes: np.ndarray, width: int, height: int, min_side: float) -> tuple[np.ndarray, np.ndarray]:
    """Clip xyxy boxes into the image; return (kept boxes, keep mask) dropping those thinner than ``min_side``."""
    boxes = boxes.astype(np.float32).reshape(-1, 4).copy()
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, width)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, height)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_side) & ((boxes[:, 3] - boxes[:, 1]) >= min_side)
    return boxes[keep], keep


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A stable 32-bit seed per (run seed, epoch, sample): same inputs, same augmented sample, any worker count."""
    return zlib.crc32(f"{seed}:{epoch}:{index}".encode())


@dataclass
class Augmented:
    image: np.ndarray
    boxes: np.ndarray  # [N, 4] float32 xyxy, inside the image
    kept: np.ndarray  # indices of the input boxes that survived
    dropped: int  # boxes lost to crops / scaling (counted, never silent)


class Augmenter:
    """An albumentations pipeline suited to underwater video, reseeded per sample."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg
        self._pipelines: dict[tuple[int, int], object] = {}

    def _pipeline(self, height: int, width: int):
        import albumentations as A

        key = (height, width)
        if key in self._pipelines:
            return self._pipelines[key]
        c = self.cfg
        if c.train_crop:
            # Fully convolutional detector: it learns from crops what it later finds in whole frames.
            side_h, side_w = min(c.train_crop, height), min(c.train_crop, width)
            crop = A.AtLeastOneBBoxRandomCrop(height=side_h, width=side_w, p=1.0)
            if c.background_crop > 0:
                crop = A.OneOf(
                    [
                        A.AtLeastOneBBoxRandomCrop(height=side_h, width=side_w, p=1.0 - c.background_crop),
                        A.RandomCrop(height=side_h, width=side_w, p=c.background_crop),
                    ],
                    p=1.0,
                )
        else:
            crop = A.RandomSizedBBoxSafeCrop(height=height, width=width, erosion_rate=0.0, p=c.crop)
        # Only when asked: an op at p=0 would still take a random draw and change every later one for a given seed.
        unnatural_colour = (
            [
                A.OneOf(
                    [
                        A.ToGray(p=1.0),
                        A.ChannelShuffle(p=1.0),
                        A.HueSaturationValue(hue_shift_limit=(-90, 90), sat_shift_limit=0, val_shift_limit=0, p=1.0),
                    ],
                    p=c.colour_invariance,
                )
            ]
            if c.colour_invariance > 0
            else []
        )
        transforms = [
            # Geometry first, so colour ops work on the final pixels.
            crop,
            A.Affine(scale=c.scale, translate_percent=(-0.1, 0.1), keep_ratio=True, p=c.affine),
            A.HorizontalFlip(p=c.hflip),
            A.VerticalFlip(p=c.vflip),
            # Water shifts colour towards blue/green and changes with depth and light.
            A.OneOf(
                [
                    A.HueSaturationValue(
                        hue_shift_limit=(-15, 15), sat_shift_limit=(-30, 30), val_shift_limit=(-25, 25)
                    ),
                    A.RGBShift(r_shift_limit=(-30, 10), g_shift_limit=(-15, 15), b_shift_limit=(-10, 30)),
                    A.RandomBrightnessContrast(brightness_limit=(-0.25, 0.25), contrast_limit=(-0.3, 0.2)),
                    A.CLAHE(clip_limit=(1.0, 3.0)),
                ],
                p=c.colour,
            ),
            *unnatural_colour,
            # Camera and swimmer motion, focus.
            A.OneOf([A.MotionBlur(blur_limit=(3, 7)), A.GaussianBlur(blur_limit=(3, 5))], p=c.blur),
            # Turbid water.
            A.RandomFog(fog_coef_range=(0.1, 0.3), alpha_coef=0.08, p=c.haze),
            A.GaussNoise(std_range=(0.01, 0.05), p=c.noise),
        ]
        pipeline = A.Compose(
            transforms,
            bbox_params=A.BboxParams(
                format="pascal_voc",
                label_fields=["box_index"],
                min_visibility=c.min_visibility,
                min_width=c.min_box_side,
                min_height=c.min_box_side,
                clip=True,
                filter_invalid_bboxes=True,
            ),
            seed=c.seed,
        )
        self._pipelines[key] = pipeline
        return pipeline

    def __call__(self, image: np.ndarray, boxes: np.ndarray, seed: int) -> Augmented:
        """Augment an RGB uint8 image and its xyxy boxes (pixels).

        The output has the input's size, or ``train_crop`` x ``train_crop`` when training on crops.
        """
        height, width = image.shape[:2]
        clean, keep = clip_and_filter(boxes, width, height, min_side=1e-3)
        index = np.flatnonzero(keep)
        pipeline = self._pipeline(height, width)
        pipeline.set_random_seed(seed)
        out = pipeline(image=image, bboxes=clean, box_index=index)
        out_boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        out_index = np.asarray(out["box_index"], dtype=np.int64).reshape(-1)
        # Belt and braces: whatever albumentations returns, boxes leave here inside the image and non-degenerate.
        out_height, out_width = out["image"].shape[:2]
        final, ok = clip_and_filter(out_boxes, out_width, out_height, self.cfg.min_box_side)
        kept = out_index[ok]
        return Augmented(image=out["image"], boxes=final, kept=kept, dropped=int(len(boxes) - len(kept)))

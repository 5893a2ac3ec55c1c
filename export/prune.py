"""Structured pruning of the whole detector with torch-pruning: channels really go, so MACs and latency drop.

What is pruned, and why this way:
* Backbone body (MobileNetV3 / ResNet): torch-pruning's dependency graph removes coupled channel groups (expansion
  convs, depthwise convs, squeeze-excitation, BatchNorm, residual adds) and, as dependents, the input channels of
  the FPN lateral convs.
* FPN channels, by hand with torch-pruning's pruning functions, because the dependency graph cannot see all the
  couplings (it does not trace through torchvision's RoIAlign and the shared RPN head; letting it prune the FPN
  broke the model: the RPN conv then received fewer channels than it expected). Two coupled groups, one index set
  per group for every level: (1) the lateral ("inner") conv outputs with the 3x3 ("layer") conv inputs — the
  top-down path adds levels together; (2) the 3x3 conv outputs with the RPN conv's inputs and, through RoIAlign
  and the flatten of [C, 7, 7], fc6's input columns c*49 .. c*49+48.
* RPN head conv (3x3, applied at every level): its output channels, with the matching inputs of the objectness and
  box-delta convs.
* Box head (TwoMLPHead fc6/fc7): the representation width, with the predictor's inputs. The profile in the issue
  puts ~34 % of CPU time in these two layers.
* Test-time proposals (optional): fewer RoIs through RoIAlign and the box head; an inference setting, not a
  weight change, recorded in the model config.
The final predictors (RPN objectness / deltas, box classifier / regressor) keep their output channels.
Not `torch.nn.utils.prune`: masks leave every shape (and so every MAC) in place.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from export.onnx_export import ContractDetector, ExportError
from train.model import ModelConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneConfig:
    """How much to remove (fractions of channels) and how many test-time proposals to keep."""

    ratio: float = 0.5
    head_ratio: float | None = None  # box head representation; default: ratio
    rpn_ratio: float | None = None  # RPN conv channels; default: ratio
    fpn_ratio: float | None = None  # FPN channels; default: ratio
    proposals: int | None = None  # rpn_post_nms_top_n_test; None keeps the trained value
    round_to: int = 8  # keep channel counts multiples of 8 (friendlier to int8 kernels and TensorRT)
    # Backbone layers this narrow keep every channel: halving a 16-channel bottleneck at stride 2 starves the small
    # starfish of detail for a negligible MAC saving.
    min_channels: int = 16

    def __post_init__(self) -> None:
        for name in ("ratio", "head_ratio", "rpn_ratio", "fpn_ratio"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ExportError(f"pruning {name} must be in [0, 1), got {value}")
        if self.proposals is not None and self.proposals < 1:
            raise ExportError(f"proposals must be >= 1, got {self.proposals}")


@dataclass
class ModelStats:
    params: int
    macs: int

    def to_dict(self) -> dict:
        return asdict(self)


def model_stats(model: nn.Module, width: int, height: int) -> ModelStats:
    """Parameters and MACs of one inference at ``width x height`` (torch-pruning's op counter)."""
    import torch_pruning as tp

    # torchvision's own RPN path: the lean one registers the RPN head twice, and the op counter would count it twice.
    wrapper = ContractDetector(model.eval(), width, height, lean_tail=False).eval()
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(wrapper, torch.rand(1, 3, height, width))
    return ModelStats(params=int(params), macs=int(macs))


def prune_detector(
    model: nn.Module, model_cfg: ModelConfig, prune: PruneConfig, width: int, height: int
) -> tuple[nn.Module, ModelConfig]:
    """Prune ``model`` in place (eval mode); return it and the model config to rebuild/run it with."""
    import torch_pruning as tp

    from train.model import count_frozen_batchnorm

    if count_frozen_batchnorm(model):
        raise ExportError(
            "the model has FrozenBatchNorm2d layers, which torch-pruning cannot prune; "
            "convert them to BatchNorm2d first"
        )
    for p in model.parameters():
        p.requires_grad_(True)  # torch-pruning does not see frozen parameters
    model.eval()
    example = torch.rand(1, 3, height, width)
    backbone = model.backbone
    if prune.ratio > 0:
        fpn = backbone.fpn
        before = {k: tuple(v.shape) for k, v in backbone(example).items()}
        pruner = tp.pruner.MetaPruner(
            backbone,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=prune.ratio,
            ignored_layers=[*fpn.layer_blocks, *fpn.inner_blocks, *_narrow_convs(backbone.body, prune.min_channels)],
            round_to=prune.round_to,
            output_transform=lambda out: sum(o.sum() for o in out.values()),
        )
        pruner.step()
        after = {k: tuple(v.shape) for k, v in backbone(example).items()}
        if before != after:
            raise ExportError(f"backbone pruning changed the FPN outputs {before} -> {after}")
    fpn_ratio = prune.ratio if prune.fpn_ratio is None else prune.fpn_ratio
    if fpn_ratio > 0:
        _prune_fpn(model, fpn_ratio, prune.round_to)
    rpn_ratio = prune.ratio if prune.rpn_ratio is None else prune.rpn_ratio
    if rpn_ratio > 0:
        head = model.rpn.head
        conv = head.conv[0][0]
        keep = _keep(conv.weight.detach().flatten(1), rpn_ratio, prune.round_to)
        drop = _complement(keep, conv.out_channels)
        tp.prune_conv_out_channels(conv, drop)
        tp.prune_conv_in_channels(head.cls_logits, drop)
        tp.prune_conv_in_channels(head.bbox_pred, drop)
    head_ratio = prune.ratio if prune.head_ratio is None else prune.head_ratio
    if head_ratio > 0:
        box_head, predictor = model.roi_heads.box_head, model.roi_heads.box_predictor
        for layer, consumers in (
            (box_head.fc6, [box_head.fc7]),
            (box_head.fc7, [predictor.cls_score, predictor.bbox_pred]),
        ):
            keep = _keep(layer.weight.detach(), head_ratio, prune.round_to)
            drop = _complement(keep, layer.out_features)
            tp.prune_linear_out_channels(layer, drop)
            for consumer in consumers:
                tp.prune_linear_in_channels(consumer, drop)
    new_cfg = replace(model_cfg, representation_size=model.roi_heads.box_head.fc7.out_features)
    if prune.proposals is not None:
        new_cfg = with_test_proposals(model, new_cfg, prune.proposals)
    model.eval()
    with torch.no_grad():
        ContractDetector(model, width, height)(example)  # the pruned model must still run end to end
    return model, new_cfg


def _narrow_convs(body: nn.Module, min_channels: int) -> list[nn.Module]:
    return [m for m in body.modules() if isinstance(m, nn.Conv2d) and m.out_channels <= min_channels]


def _prune_fpn(model: nn.Module, ratio: float, round_to: int) -> None:
    import torch_pruning as tp

    fpn = model.backbone.fpn
    inner = [block[0] for block in fpn.inner_blocks]
    layer = [block[0] for block in fpn.layer_blocks]
    fc6 = model.roi_heads.box_head.fc6
    pooled = fc6.in_features // layer[0].out_channels
    if pooled * layer[0].out_channels != fc6.in_features:
        raise ExportError(f"fc6 takes {fc6.in_features} inputs, not a multiple of {layer[0].out_channels} channels")
    # group 1: lateral outputs == 3x3 inputs (summed across levels by the top-down path)
    importance = sum(conv.weight.detach().flatten(1).norm(dim=1) for conv in inner)
    drop = _complement(_keep(importance[:, None], ratio, round_to), inner[0].out_channels)
    for conv in inner:
        tp.prune_conv_out_channels(conv, drop)
    for conv in layer:
        tp.prune_conv_in_channels(conv, drop)
    # group 2: FPN outputs == RPN conv inputs == fc6 input blocks
    importance = sum(conv.weight.detach().flatten(1).norm(dim=1) for conv in layer)
    drop = _complement(_keep(importance[:, None], ratio, round_to), layer[0].out_channels)
    for conv in layer:
        tp.prune_conv_out_channels(conv, drop)
    tp.prune_conv_in_channels(model.rpn.head.conv[0][0], drop)
    tp.prune_linear_in_channels(fc6, [c * pooled + k for c in drop for k in range(pooled)])
    model.backbone.out_channels = layer[0].out_channels


def with_test_proposals(model: nn.Module, cfg: ModelConfig, proposals: int) -> ModelConfig:
    """Keep ``proposals`` RoIs per frame after the RPN's NMS (and at most 4x that before it): an inference
    setting that shrinks RoIAlign, the box head and the NMS work, no weights touched."""
    new_cfg = replace(
        cfg,
        rpn_post_nms_top_n_test=proposals,
        rpn_pre_nms_top_n_test=max(proposals, min(cfg.rpn_pre_nms_top_n_test, 4 * proposals)),
    )
    set_test_proposals(model, new_cfg.rpn_pre_nms_top_n_test, new_cfg.rpn_post_nms_top_n_test)
    return new_cfg


def set_test_proposals(model: nn.Module, pre_nms: int, post_nms: int) -> None:
    model.rpn._pre_nms_top_n["testing"] = pre_nms
    model.rpn._post_nms_top_n["testing"] = post_nms


def _keep(weight: torch.Tensor, ratio: float, round_to: int) -> list[int]:
    """Indices of the output channels to keep: the largest L2 norms, count rounded to ``round_to``."""
    total = weight.shape[0]
    keep = (
        max(round_to, int(round(total * (1 - ratio) / round_to)) * round_to) if round_to else round(total * (1 - ratio))
    )
    keep = min(total, max(1, keep))
    norms = weight.reshape(total, -1).norm(dim=1)
    return sorted(torch.argsort(norms, descending=True)[:keep].tolist())


def _complement(keep: list[int], total: int) -> list[int]:
    kept = set(keep)
    return [i for i in range(total) if i not in kept]

"""Load the model an export starts from: a training checkpoint, or a pruned one written by `export prune`.

Training checkpoints are read by `train.checkpoint` (which refuses files that are not ours). A pruned detector no
longer matches what `ModelConfig` builds, so its checkpoint also records the shape attributes of every Conv /
BatchNorm / Linear layer; `rebuild_pruned` re-creates those shapes before loading the weights. Everything stays
plain types and tensors, so the file loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edge_agent.bundle.files import sha256_file
from export.onnx_export import ExportError
from train.model import CLASSES, ModelConfig, build_detector

logger = logging.getLogger(__name__)

PRUNED_ARCHITECTURE = "pruned"
_SHAPE_ATTRS: dict[type, tuple[str, ...]] = {
    nn.Conv2d: ("in_channels", "out_channels", "groups"),
    nn.BatchNorm2d: ("num_features",),
    nn.Linear: ("in_features", "out_features"),
}


@dataclass
class SourceModel:
    """A detector plus what the bundle needs to know about where it came from."""

    model: nn.Module
    cfg: ModelConfig
    info: dict[str, Any]
    path: Path | None
    sha256: str | None
    classes: tuple[str, ...] = CLASSES
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def score_threshold(self) -> float:
        return float(self.info.get("score_threshold", 0.5))

    @property
    def config_digest(self) -> str | None:
        return self.info.get("config_digest")

    @property
    def data_fingerprint(self) -> str | None:
        return self.info.get("data_fingerprint")


def load_source(path: str | os.PathLike, expected_classes: tuple[str, ...] | None = None) -> SourceModel:
    """Load a training or pruned checkpoint; `ExportError` names the problem (not ours, class mismatch...)."""
    from train.checkpoint import CheckpointError, load_detector, read_checkpoint

    path = Path(path)
    try:
        data = read_checkpoint(path)
        info = dict(data["starfish"])
        if info.get("architecture") == PRUNED_ARCHITECTURE:
            cfg = ModelConfig.from_dict(dict(info["model_config"]))
            model = rebuild_pruned(cfg, info["layer_shapes"], _weights(data["state_dict"]), source=str(path))
        else:
            model, cfg, info = load_detector(path)
    except CheckpointError as exc:
        raise ExportError(str(exc)) from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"{path} is not a usable starfish-edge checkpoint: {exc}") from exc
    classes = tuple(info.get("classes") or CLASSES)
    if len(classes) != cfg.num_classes:
        raise ExportError(
            f"{path}: class list {list(classes)} has {len(classes)} entries but the model predicts "
            f"{cfg.num_classes} classes"
        )
    if expected_classes is not None and tuple(expected_classes) != classes:
        raise ExportError(f"{path}: classes {list(classes)} differ from the expected {list(expected_classes)}")
    predictor = model.roi_heads.box_predictor.cls_score
    if predictor.out_features != len(classes):
        raise ExportError(f"{path}: the box predictor has {predictor.out_features} outputs for {len(classes)} classes")
    logger.info(
        "loaded %s (%s, %d classes, %.2fM parameters)",
        path,
        info.get("architecture", "model_config"),
        len(classes),
        count_parameters(model) / 1e6,
    )
    return SourceModel(model.eval(), cfg, info, path, sha256_file(path), classes)


def _weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if any(k.startswith("model.") for k in state):
        return {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    return dict(state)


def layer_shapes(model: nn.Module) -> dict[str, dict[str, int]]:
    """Shape attributes of every prunable layer, keyed by module name (plain ints: weights_only-safe)."""
    shapes = {}
    for name, module in model.named_modules():
        attrs = _SHAPE_ATTRS.get(type(module))
        if attrs:
            shapes[name] = {a: int(getattr(module, a)) for a in attrs}
    return shapes


def rebuild_pruned(
    cfg: ModelConfig, shapes: dict[str, dict[str, int]], weights: dict[str, torch.Tensor], source: str = "checkpoint"
) -> nn.Module:
    """Build ``cfg``'s detector, resize its layers to ``shapes``, then load ``weights`` strictly."""
    model = build_detector(ModelConfig.from_dict({**cfg.to_dict(), "pretrained": False}))
    modules = dict(model.named_modules())
    for name, attrs in shapes.items():
        module = modules.get(name)
        if module is None or type(module) not in _SHAPE_ATTRS:
            raise ExportError(f"{source}: pruned layer {name!r} does not exist in a {cfg.backbone} detector")
        for attr, value in attrs.items():
            setattr(module, attr, int(value))
        # Parameters/buffers take the checkpoint's shapes; load_state_dict then fills them.
        for param_name, param in list(module.named_parameters(recurse=False)):
            key = f"{name}.{param_name}"
            if key in weights:
                setattr(module, param_name, nn.Parameter(torch.empty_like(weights[key]), param.requires_grad))
        for buffer_name, buffer in list(module.named_buffers(recurse=False)):
            key = f"{name}.{buffer_name}"
            if key in weights and buffer is not None:
                module.register_buffer(buffer_name, torch.empty_like(weights[key]))
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise ExportError(f"{source}: weights do not fit the recorded pruned shapes: {str(exc)[:300]}") from exc
    return model.eval()


def save_pruned(model: nn.Module, cfg: ModelConfig, info: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a pruned detector checkpoint (weights + layer shapes + provenance) atomically."""
    from train.checkpoint import CHECKPOINT_FORMAT, save_detector

    payload = {
        "format": CHECKPOINT_FORMAT,
        "classes": list(CLASSES),
        **info,
        "architecture": PRUNED_ARCHITECTURE,
        "model_config": cfg.to_dict(),
        "layer_shapes": layer_shapes(model),
    }
    return save_detector(model, payload, path)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

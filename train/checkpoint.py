"""Reading and writing detector checkpoints, safely (``torch.load(weights_only=True)``) and with clear errors.

Two files carry a detector, both with a ``starfish`` block (format, model config, best-F2 threshold, ...):

* the Lightning checkpoint written during training (weights under ``model.`` plus optimizer/loop state: resumable);
* a slim checkpoint (``save_detector``: weights + ``starfish`` block only) for hand-over to the export side.

`load_detector` reads either and refuses, with a short message rather than a state-dict dump, a file that is not
ours or whose weights do not fit the architecture it names (or the one the caller expects).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from train.model import ModelConfig, build_detector
from train.module import CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION

logger = logging.getLogger(__name__)

# Fields of ModelConfig that only change inference behaviour, not tensor shapes.
_INFERENCE_ONLY = {
    "min_size",
    "max_size",
    "rpn_pre_nms_top_n_train",
    "rpn_post_nms_top_n_train",
    "rpn_pre_nms_top_n_test",
    "rpn_post_nms_top_n_test",
    "box_detections_per_img",
    "box_score_thresh",
    "box_batch_size_per_image",
    "rpn_batch_size_per_image",
    "trainable_backbone_layers",
    "pretrained",
    "extra",
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: not a starfish-edge file, or weights of another architecture."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with a clear error for missing, foreign or unsafe files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types (pickle, zip, runtime); all mean "not usable"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable weights-only checkpoint: {first_line[:200]}") from None
    if not isinstance(data, dict) or "starfish" not in data or "state_dict" not in data:
        raise CheckpointError(f"{path} is not a starfish-edge detector checkpoint (no 'starfish' block)")
    info = data["starfish"]
    if info.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} has format {info.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    if int(info.get("format_version", 0)) > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {info.get('format_version')}, newer than this code "
            f"({CHECKPOINT_FORMAT_VERSION}); upgrade starfish-edge"
        )
    return data


def _weights(data: dict[str, Any]) -> dict[str, torch.Tensor]:
    state = data["state_dict"]
    # Lightning stores the module's parameters under the attribute name `model.`.
    if any(k.startswith("model.") for k in state):
        return {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    return dict(state)


def _describe_mismatch(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> str | None:
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [k for k in own if k in weights and tuple(own[k].shape) != tuple(weights[k].shape)]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
    if shapes:
        k = shapes[0]
        parts.append(
            f"{len(shapes)} shape mismatches (e.g. {k}: checkpoint {tuple(weights[k].shape)} vs model "
            f"{tuple(own[k].shape)})"
        )
    return "; ".join(parts)


def architecture_differences(a: ModelConfig, b: ModelConfig) -> list[str]:
    """Names of the config fields that change tensor shapes and differ between ``a`` and ``b``."""
    da, db = a.to_dict(), b.to_dict()
    return [k for k in da if k not in _INFERENCE_ONLY and da[k] != db.get(k)]


def load_detector(
    path: str | Path, expected: ModelConfig | None = None
) -> tuple[torch.nn.Module, ModelConfig, dict[str, Any]]:
    """Load a detector (eval mode, CPU) from a Lightning or slim checkpoint.

    Returns ``(model, model_config, info)`` where ``info`` is the checkpoint's ``starfish`` block (score threshold,
    validation metrics, training config, digest). Raises :class:`CheckpointError` when the file is not ours, was
    saved from a custom (e.g. pruned) architecture, or its weights do not fit; with ``expected`` also when its
    architecture differs from the expected one.
    """
    data = read_checkpoint(path)
    info = dict(data["starfish"])
    if info.get("architecture", "model_config") != "model_config":
        raise CheckpointError(
            f"{path} holds a custom (modified, e.g. pruned) architecture that ModelConfig cannot rebuild"
        )
    try:
        cfg = ModelConfig.from_dict(dict(info["model_config"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} has an unusable model config: {exc}") from None
    if expected is not None:
        differences = architecture_differences(cfg, expected)
        if differences:
            details = ", ".join(f"{k}={getattr(cfg, k)!r} (expected {getattr(expected, k)!r})" for k in differences)
            raise CheckpointError(f"{path} is a different architecture: {details}")
    # The weights are loaded next: skip any download even if the run used pretrained weights.
    build_cfg = ModelConfig.from_dict({**cfg.to_dict(), "pretrained": False})
    model = build_detector(build_cfg)
    weights = _weights(data)
    mismatch = _describe_mismatch(model, weights)
    if mismatch:
        raise CheckpointError(f"{path} does not fit the {cfg.backbone} architecture it names: {mismatch}")
    model.load_state_dict(weights)
    model.eval()
    return model, cfg, info


def _atomic_save(payload: dict[str, Any], path: Path) -> Path:
    """torch.save to a temp file beside ``path`` then rename: a crash never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".ckpt", dir=path.parent)
    os.close(handle)
    try:
        torch.save(payload, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_detector(model: torch.nn.Module, info: dict[str, Any], path: str | Path) -> Path:
    """Write a slim, weights-only-loadable checkpoint (weights + ``starfish`` block) atomically."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return _atomic_save({"starfish": dict(info), "state_dict": state}, Path(path))


def slim_copy(lightning_checkpoint: str | Path, path: str | Path) -> Path:
    """Turn a (large, resumable) Lightning checkpoint into a slim one at ``path``."""
    data = read_checkpoint(lightning_checkpoint)
    out = _atomic_save({"starfish": data["starfish"], "state_dict": _weights(data)}, Path(path))
    logger.info("wrote %s from %s", out, lightning_checkpoint)
    return out

"""An untrained, demo-grade bundle: lets the edge agent run end to end before any checkpoint exists.

Its detections are meaningless (random weights); it exercises the real export path and bundle format.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from edge_agent.bundle import InputSpec, TrainingInfo, VariantSource, load_private_key, write_bundle
from edge_agent.bundle.manifest import Manifest
from export.onnx_export import default_input_size, export_onnx
from export.provenance import MODEL_NAME, config_digest
from train.model import CLASSES, ModelConfig, build_detector

logger = logging.getLogger(__name__)

# Small enough to export in seconds and to commit: 64 FPN channels, box head representation 128.
DEMO_CONFIG = ModelConfig(
    min_size=128,
    max_size=224,
    fpn_channels=64,
    representation_size=128,
    rpn_pre_nms_top_n_test=100,
    rpn_post_nms_top_n_test=50,
    box_detections_per_img=20,
)


def untrained_bundle(
    dest: str | os.PathLike,
    private_key: str | os.PathLike,
    *,
    cfg: ModelConfig = DEMO_CONFIG,
    input_size: tuple[int, int] | None = None,
    version: int = 1,
    score_threshold: float = 0.5,
    int8: bool = False,
    cpu_int8: bool = False,
    keep_fp32: bool = True,
    seed: int = 0,
    overwrite: bool = False,
    golden_frames: int = 0,
) -> Manifest:
    """Build an untrained detector from ``cfg``, export it (fp32, optionally INT8 calibrated on random frames: the
    TensorRT-ready ``int8`` and/or the CPU's ``int8_cpu`` with uint8 activations) and write a signed bundle to
    ``dest``, with ``golden_frames`` smooth random golden frames (`export.golden`) when asked."""
    torch.manual_seed(seed)
    model = build_detector(replace(cfg, pretrained=False)).eval()
    width, height = input_size or default_input_size(cfg.max_size)
    key = load_private_key(private_key)
    with tempfile.TemporaryDirectory(prefix="starfish-demo-") as tmp:
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx", width, height)
        variants: dict[str, VariantSource] = {}
        if keep_fp32:
            variants["fp32"] = VariantSource(fp32)
        if int8 or cpu_int8:
            from edge_agent.bundle.manifest import CPU_INT8_VARIANT
            from export.quantize import quantize_int8, random_calibration_frames

            frames = random_calibration_frames(width, height, count=8, seed=seed)
            if int8:
                variants["int8"] = VariantSource(quantize_int8(fp32, Path(tmp) / "int8.onnx", frames))
            if cpu_int8:
                variants[CPU_INT8_VARIANT] = VariantSource(
                    quantize_int8(fp32, Path(tmp) / "int8_cpu.onnx", frames, activations="asymmetric")
                )
        golden = None
        if golden_frames:
            from export.golden import encode_frames, random_frames, record_golden

            pngs = encode_frames(random_frames(width, height, golden_frames, seed), width, height)
            golden = record_golden(pngs, variants, score_threshold, width, height)
        return write_bundle(
            dest,
            name=MODEL_NAME,
            version=version,
            classes=CLASSES,
            input_spec=InputSpec.for_size(width, height),
            variants=variants,
            score_threshold=score_threshold,
            training=TrainingInfo(
                config_digest=config_digest(cfg.to_dict()), data_fingerprint=None, checkpoint_sha256=None
            ),
            private_key=key,
            overwrite=overwrite,
            golden=golden,
        )

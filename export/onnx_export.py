"""Export a torchvision Faster R-CNN to ONNX under the contract of `edge_agent.preprocess`.

The graph takes ``images`` float32 [1, 3, H, W] RGB in [0, 1] at one fixed size and returns ``boxes`` (xyxy, input
pixels), ``scores`` and ``labels``. ImageNet normalisation is inside the graph; resizing is NOT (the caller
letterboxes with `edge_agent.preprocess.letterbox`), so torchvision's in-model resize and box rescaling are bypassed:
at a fixed, 32-divisible size they are identities that would only add Resize ops to the graph.

Two exact rewrites of torchvision's inference path make the float detection tail cheaper (the same boxes, scores
and labels; measured in train/results/compression/tail_knobs.md): the RPN keeps its per-level top-k anchors before
decoding boxes (`TopKFirstRPN`: decodes ``levels x pre_nms_top_n`` anchors, not all ~73k at 1024x576), and
MultiScaleRoIAlign's ONNX level merge puts the levels' outputs back in RoI order with one Gather instead of one
full-size ScatterElements per level (`gathered_roi_levels`, export only: eager PyTorch does not use that merge).

TorchScript exporter (``dynamo=False``): the dynamo exporter fails on torchvision's NMS/RoIAlign. Opset 17: the
newest TensorRT 8.5/8.6 (JetPack 5 / 6.0) parse.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.image_list import ImageList

from edge_agent.preprocess import INPUT_NAME, OUTPUT_NAMES

logger = logging.getLogger(__name__)

OPSET = 17
SIZE_DIVISOR = 32


class ExportError(RuntimeError):
    """The model could not be exported, or the exported ONNX is not usable (names the failing check)."""


class ContractDetector(nn.Module):
    """Faster R-CNN with the contract's I/O: one fixed-size [1,3,H,W] tensor in, (boxes, scores, labels) out."""

    def __init__(self, model: FasterRCNN, width: int, height: int, *, lean_tail: bool = True) -> None:
        super().__init__()
        check_input_size(width, height)
        self.model = model
        self.lean_tail = lean_tail  # False: torchvision's own RPN path (decodes every anchor)
        if lean_tail:
            self.rpn = TopKFirstRPN(model.rpn)
        self.width = width
        self.height = height

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.model.transform.normalize(images[0])[None]
        image_list = ImageList(x, [(self.height, self.width)])
        features = self.model.backbone(x)
        if self.lean_tail:
            proposals = self.rpn(image_list, features)
        else:
            proposals, _ = self.model.rpn(image_list, features)
        detections, _ = self.model.roi_heads(features, proposals, image_list.image_sizes)
        det = detections[0]
        return det["boxes"], det["scores"], det["labels"]


class TopKFirstRPN(nn.Module):
    """torchvision's ``RegionProposalNetwork`` at inference, one image, with the per-level top-k taken before box
    decoding rather than after: decoding is per anchor, so the kept proposals are the same, but only
    ``pre_nms_top_n`` anchors per level are decoded. ``filter_proposals`` does the rest (its own per-level top-k now
    keeps everything it is given). Registered as the wrapper's ``rpn`` with the RPN's own ``head``, so the exported
    node names (``/rpn/head/...``, which `export.quantize` selects by) stay what torchvision's path gives."""

    def __init__(self, rpn: nn.Module) -> None:
        super().__init__()
        self.head = rpn.head
        self.anchor_generator = rpn.anchor_generator
        self._rpn = [rpn]  # not a submodule: its head must not be registered twice

    def forward(self, images: ImageList, features: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        from torchvision.models.detection.rpn import concat_box_prediction_layers

        rpn = self._rpn[0]
        feats = list(features.values())
        objectness, deltas = self.head(feats)
        anchors = self.anchor_generator(images, feats)
        per_level = [int(o[0].shape[0] * o[0].shape[1] * o[0].shape[2]) for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        scores = objectness.reshape(1, -1)
        top = rpn._get_top_n_idx(scores, per_level)[0]
        kept = [min(rpn.pre_nms_top_n(), n) for n in per_level]
        proposals = rpn.box_coder.decode(deltas[top], [anchors[0][top]]).view(1, -1, 4)
        boxes, _ = rpn.filter_proposals(proposals, scores[:, top], images.image_sizes, kept)
        return list(boxes)


def _gather_merge_levels(levels: torch.Tensor, unmerged_results: list[torch.Tensor]) -> torch.Tensor:
    """``torchvision.ops.poolers._onnx_merge_levels`` with one Gather: concatenate the levels' RoIAlign outputs and
    put them back in RoI order by the inverse permutation (the original scatters a full-size tensor per level)."""
    order = torch.cat([torch.where(levels == level)[0] for level in range(len(unmerged_results))])
    inverse = torch.zeros_like(order).scatter(0, order, torch.arange(order.shape[0], dtype=order.dtype))
    return torch.cat(unmerged_results, 0)[inverse]


@contextlib.contextmanager
def gathered_roi_levels(enabled: bool = True) -> Iterator[None]:
    """While tracing for export, MultiScaleRoIAlign merges its levels with `_gather_merge_levels`."""
    import torchvision.ops.poolers as poolers

    original = poolers._onnx_merge_levels
    if enabled:
        poolers._onnx_merge_levels = _gather_merge_levels
    try:
        yield
    finally:
        poolers._onnx_merge_levels = original


def check_input_size(width: int, height: int) -> None:
    if width <= 0 or height <= 0 or width % SIZE_DIVISOR or height % SIZE_DIVISOR:
        raise ExportError(f"input size must be positive multiples of {SIZE_DIVISOR}, got {width}x{height}")


def default_input_size(max_size: int, aspect: float = 16 / 9) -> tuple[int, int]:
    """Deployment size for 16:9 frames: width = max_size and height = the frame's height at that width, both
    rounded up to a multiple of 32 (what torchvision pads to during training anyway)."""

    def up(value: float) -> int:
        return int(-(-round(value) // SIZE_DIVISOR) * SIZE_DIVISOR)

    return up(max_size), up(max_size / aspect)


def export_onnx(
    model: FasterRCNN,
    out_path: str | os.PathLike,
    width: int,
    height: int,
    *,
    opset: int = OPSET,
    simplify: bool = True,
    lean_tail: bool = True,
) -> Path:
    """Export ``model`` (eval mode, CPU) to ``out_path``, simplified and checker-clean; written atomically.

    ``lean_tail=False`` exports torchvision's own RPN decoding and RoI level merge (for comparison only)."""
    import onnx

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = ContractDetector(model.eval().cpu(), width, height, lean_tail=lean_tail).eval()
    example = torch.rand(1, 3, height, width)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.stem}.", suffix=".onnx", dir=out_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings(), gathered_roi_levels(lean_tail):
            # Tracing torchvision detection emits many TracerWarnings that are expected for a fixed input size.
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            warnings.simplefilter("ignore", category=UserWarning)
            torch.onnx.export(
                wrapper,
                (example,),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes={name: {0: "detections"} for name in OUTPUT_NAMES},
                do_constant_folding=True,
            )
        model_proto = onnx.load(str(tmp))
        if simplify:
            model_proto = _slim(model_proto)
        check_onnx(model_proto, source=str(out_path))
        onnx.save(model_proto, str(tmp))
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("exported %s (%dx%d, opset %d, %.1f MB)", out_path, width, height, opset, out_path.stat().st_size / 1e6)
    return out_path


def _slim(model_proto):  # type: ignore[no-untyped-def]
    import onnxslim

    try:
        return onnxslim.slim(model_proto)
    except Exception as exc:  # noqa: BLE001  onnxslim raises assorted errors; an unsimplified graph still works
        logger.warning("onnxslim failed (%s); keeping the unsimplified graph", exc)
        return model_proto


def check_onnx(model_or_path, source: str | None = None) -> None:  # type: ignore[no-untyped-def]
    """Run `onnx.checker` (full check, shape inference) and the I/O contract check; raise `ExportError`."""
    import onnx

    name = source or str(model_or_path)
    try:
        proto = onnx.load(str(model_or_path)) if isinstance(model_or_path, (str, os.PathLike)) else model_or_path
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, OSError, ValueError) as exc:
        raise ExportError(f"{name} fails the ONNX checker: {exc}") from exc
    except Exception as exc:  # noqa: BLE001  protobuf's DecodeError for non-ONNX bytes has no public base here
        raise ExportError(f"{name} is not a readable ONNX model: {exc}") from exc
    inputs = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    if inputs != [INPUT_NAME] or outputs != list(OUTPUT_NAMES):
        raise ExportError(
            f"{name} has inputs {inputs} / outputs {outputs}; the contract is {INPUT_NAME} -> {list(OUTPUT_NAMES)}"
        )

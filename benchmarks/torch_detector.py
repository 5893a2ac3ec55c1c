"""The source PyTorch model behind the edge agent's `Detector` interface (``torch-cpu`` / ``torch-cuda``).

It runs `export.onnx_export.ContractDetector` — the very module the ONNX graph is traced from — on the same
letterboxed tensor the ONNX back ends get, so the comparison is like for like: same pre-processing
(`Detector.detect`), same network, same outputs; only the runtime differs. Outputs are copied to the host before
`infer` returns, which synchronises CUDA, so the clock never stops on queued GPU work. A checkpoint that is not
the one the bundle records is still run, with a warning and ``checkpoint_matches_bundle: false`` in the result.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge_agent.detectors.base import Detector, DetectorOptions

logger = logging.getLogger(__name__)


class TorchDetector(Detector):
    name = "torch"

    def __init__(
        self, bundle: object, variant: str | None, options: DetectorOptions, *, checkpoint: Path, device: str
    ) -> None:
        # The ONNX variants are not used here; the default one only satisfies the base class's bookkeeping.
        super().__init__(bundle, None, options)
        self.variant = "pytorch"
        import torch

        from export.onnx_export import ContractDetector
        from export.source import load_source

        self._torch = torch
        if options.threads:
            torch.set_num_threads(options.threads)
        try:
            torch.set_num_interop_threads(1)  # one frame at a time: inter-op parallelism only adds noise
        except RuntimeError:  # already fixed once parallel work has run in this process
            logger.debug("torch inter-op threads already set to %d", torch.get_num_interop_threads())
        self.device = torch.device(device)
        # Training checkpoints and pruned ones (`export prune`) alike: the same loader the export chain uses.
        source = load_source(Path(checkpoint))
        self.model_path = Path(checkpoint)
        expected = bundle.manifest.training.checkpoint_sha256
        # None when the bundle does not record its checkpoint (e.g. an untrained demo): nothing to check against.
        self.matches_bundle = None if expected is None else source.sha256 == expected
        if self.matches_bundle is False:
            logger.warning(
                "%s is not the checkpoint %s was exported from (sha256 %s..., bundle says %s...)",
                checkpoint,
                bundle.manifest.name,
                source.sha256[:12],
                expected[:12],
            )
        self.module = ContractDetector(source.model.eval().to(self.device), self.input_width, self.input_height).eval()

    @classmethod
    def available(cls, device: str = "cpu") -> tuple[bool, str]:
        try:
            import torch
        except ImportError as exc:
            return False, f"torch is not installed ({exc}); needs the `train` extra"
        if device == "cuda" and not torch.cuda.is_available():
            return False, f"torch {torch.__version__} sees no CUDA device (CUDA build: {torch.version.cuda})"
        return True, f"torch {torch.__version__}"

    def infer(self, tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            boxes, scores, labels = self.module(torch.from_numpy(tensor).to(self.device))
            return boxes.cpu().numpy(), scores.cpu().numpy(), labels.cpu().numpy()

    def infer_batch(self, tensors: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Several contract tensors ``[B, 3, H, W]`` in one forward pass (the ONNX graphs are batch-1 only)."""
        from torchvision.models.detection.image_list import ImageList

        torch = self._torch
        model = self.module.model
        with torch.inference_mode():
            x = torch.from_numpy(tensors).to(self.device)
            x = torch.stack([model.transform.normalize(image) for image in x])
            images = ImageList(x, [(self.input_height, self.input_width)] * x.shape[0])
            features = model.backbone(x)
            proposals, _ = model.rpn(images, features)
            detections, _ = model.roi_heads(features, proposals, images.image_sizes)
            return [
                (d["boxes"].cpu().numpy(), d["scores"].cpu().numpy(), d["labels"].cpu().numpy()) for d in detections
            ]

    def count_macs(self, tensor: np.ndarray) -> int:
        """MACs of one forward pass on ``tensor`` (torch's FLOP counter / 2): the source model may differ from the
        bundle's (pruned) graph, so its arithmetic is counted on its own."""
        from torch.utils.flop_counter import FlopCounterMode

        torch = self._torch
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            self.module(torch.from_numpy(tensor).to(self.device))
        return int(counter.get_total_flops() // 2)

    def thread_info(self) -> dict[str, int | str]:
        torch = self._torch
        return {"torch_intra_op": torch.get_num_threads(), "torch_inter_op": torch.get_num_interop_threads()}

    def gpu_peak_mb(self) -> float | None:
        torch = self._torch
        if self.device.type != "cuda":
            return None
        return torch.cuda.max_memory_reserved(self.device) / 2**20

    def describe(self) -> dict:
        info = super().describe()
        info["checkpoint"] = str(self.model_path)
        info["checkpoint_matches_bundle"] = self.matches_bundle
        info["device"] = str(self.device)
        return info

"""The benchmark's back ends by name, and how each one becomes a running `edge_agent.detectors.Detector`.

Inference is never re-implemented here: the ``ort-*`` and ``tensorrt-*`` back ends are the edge agent's own
detectors (so the benchmark measures what the agent runs, pre/post-processing included), and ``torch-*`` is the
source PyTorch model behind the same `Detector` interface (`benchmarks.torch_detector`).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from edge_agent.bundle.manifest import CPU_INT8_VARIANT

if TYPE_CHECKING:
    from edge_agent.bundle import VerifiedBundle
    from edge_agent.detectors import Detector

logger = logging.getLogger(__name__)

Family = Literal["torch", "onnxruntime", "tensorrt"]


class BackendSkipped(RuntimeError):
    """The back end cannot run on this machine or with these inputs; the message says why."""


@dataclass(frozen=True)
class BackendSpec:
    name: str
    family: Family
    device: Literal["cpu", "cuda"]
    precision: Literal["fp32", "fp16", "int8"]
    variant: str  # bundle variant whose ONNX file is loaded (torch-* use the checkpoint instead)
    providers: tuple[str, ...] = ()  # onnxruntime execution providers, in order
    extra: dict[str, object] = field(default_factory=dict)
    description: str = ""
    # Variants used, in order, when the bundle lacks ``variant`` (bundles before the fp16 variant existed).
    fallback_variants: tuple[str, ...] = ()

    def variant_in(self, variants: set[str]) -> str | None:
        """The bundle variant this back end loads from a bundle holding ``variants`` (None: none fits)."""
        return next((v for v in (self.variant, *self.fallback_variants) if v in variants), None)

    @property
    def supports_batch(self) -> bool:
        # The exported graphs have a fixed [1, 3, H, W] input; only the PyTorch model takes several frames at once.
        return self.family == "torch"


BACKENDS: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec("torch-cpu", "torch", "cpu", "fp32", "fp32", description="source PyTorch model on the CPU"),
        BackendSpec(
            "ort-cpu",
            "onnxruntime",
            "cpu",
            "fp32",
            "fp32",
            ("CPUExecutionProvider",),
            description="onnxruntime CPU EP, fp32 variant",
        ),
        BackendSpec(
            "ort-cpu-int8",
            "onnxruntime",
            "cpu",
            "int8",
            "int8",
            ("CPUExecutionProvider",),
            description="onnxruntime CPU EP, int8 variant (TensorRT-ready Q/DQ)",
        ),
        BackendSpec(
            "ort-cpu-int8-u8",
            "onnxruntime",
            "cpu",
            "int8",
            CPU_INT8_VARIANT,
            ("CPUExecutionProvider",),
            description="onnxruntime CPU EP, int8_cpu variant (uint8 activations, CPU integer kernels)",
        ),
        BackendSpec("torch-cuda", "torch", "cuda", "fp32", "fp32", description="source PyTorch model on CUDA"),
        BackendSpec(
            "ort-cuda",
            "onnxruntime",
            "cuda",
            "fp32",
            "fp32",
            ("CUDAExecutionProvider", "CPUExecutionProvider"),
            description="onnxruntime CUDA EP",
        ),
        BackendSpec(
            "ort-tensorrt",
            "onnxruntime",
            "cuda",
            "fp32",
            "fp32",
            ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
            description="onnxruntime TensorRT EP (fp32 engine)",
        ),
        BackendSpec(
            "tensorrt-fp16",
            "tensorrt",
            "cuda",
            "fp16",
            "fp16",
            extra={"precision": "fp16"},
            description="native TensorRT engine built with FP16 from the fp16 ONNX (fp32 ONNX in older bundles)",
            fallback_variants=("fp32",),
        ),
        BackendSpec(
            "tensorrt-int8",
            "tensorrt",
            "cuda",
            "int8",
            "int8",
            extra={"precision": "int8"},
            description="native TensorRT engine built with INT8 from the int8 (Q/DQ) ONNX",
        ),
    )
}


def parse_backends(text: str) -> list[str]:
    """``"all"`` or a comma-separated list of known names; an unknown name fails naming the known ones."""
    if text.strip().lower() == "all":
        return list(BACKENDS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown back end(s) {', '.join(unknown)}; known: {', '.join(BACKENDS)} (or 'all')")
    if not names:
        raise ValueError("no back end named")
    return list(dict.fromkeys(names))


def precheck(spec: BackendSpec, variants: set[str], checkpoint: Path | None) -> str | None:
    """A cheap reason to skip without starting a process (missing inputs or libraries), else None.

    Whether a GPU is really usable is decided in the worker, which asks the library itself.
    """
    if spec.family == "torch":
        if checkpoint is None:
            return "needs --checkpoint CKPT (the PyTorch checkpoint the bundle was exported from)"
        if not checkpoint.is_file():
            return f"checkpoint {checkpoint} does not exist"
        for module in ("torch", "export.source"):
            if importlib.util.find_spec(module) is None:
                return f"{module} is not installed (needs the `train` extra)"
        if spec.device == "cuda":
            from benchmarks.torch_detector import TorchDetector

            ok, reason = TorchDetector.available("cuda")  # imports torch; the fingerprint does so anyway
            return None if ok else reason
        return None
    if spec.variant_in(variants) is None:
        return f"bundle has no {spec.variant!r} variant (it has {', '.join(sorted(variants))})"
    if spec.family == "onnxruntime":
        if importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed (needs the `edge` extra)"
        import onnxruntime

        present = set(onnxruntime.get_available_providers())
        if spec.providers[0] not in present:
            return (
                f"onnxruntime {onnxruntime.__version__} has no {spec.providers[0]} "
                f"(available: {', '.join(sorted(present))}; install onnxruntime-gpu on a CUDA host)"
            )
        return None
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (it ships with JetPack; `pip install tensorrt` on a CUDA host)"
    return None


def open_detector(
    spec: BackendSpec, bundle: VerifiedBundle, checkpoint: Path | None, threads: int, cache_dir: Path | None
) -> Detector:
    """Construct the back end's `Detector` for ``bundle`` (no warm-up: the caller times the first frames itself).

    Raises `BackendSkipped` when the library reports the back end unavailable here.
    """
    from edge_agent.detectors import DetectorOptions, DetectorUnavailable, detector_class

    # score_threshold 0: keep every detection the model emits so accuracy can sweep thresholds (F2 at the
    # manifest's threshold, best F2, mAP); the filtering cost is the same for every back end.
    options = DetectorOptions(
        score_threshold=0.0,
        threads=threads,
        engine_cache_dir=cache_dir,
        warmup_runs=0,
        extra={"providers": list(spec.providers), **spec.extra},
    )
    if spec.family == "torch":
        from benchmarks.torch_detector import TorchDetector

        ok, reason = TorchDetector.available(spec.device)
        if not ok:
            raise BackendSkipped(reason)
        return TorchDetector(bundle, spec.variant, options, checkpoint=checkpoint, device=spec.device)
    cls = detector_class(spec.family)
    ok, reason = cls.available()
    if not ok:
        raise BackendSkipped(reason)
    try:
        detector = cls(bundle, spec.variant_in(set(bundle.manifest.variants)) or spec.variant, options)
    except DetectorUnavailable as exc:
        raise BackendSkipped(str(exc)) from exc
    if spec.family == "onnxruntime":
        _pin_providers(detector, spec)
    return detector


def _pin_providers(detector: object, spec: BackendSpec) -> None:
    """Check that an onnxruntime detector really runs on the provider this back end names.

    The providers are pinned through ``DetectorOptions.extra["providers"]``; the detector drops the ones this
    onnxruntime build lacks, and onnxruntime itself may refuse one at session creation (a missing CUDA library).
    Either way the session would silently run on the CPU: that makes the back end skipped, never mislabelled.
    """
    in_force = list(detector.session.get_providers())
    if not in_force or in_force[0] != spec.providers[0]:
        raise BackendSkipped(
            f"onnxruntime did not enable {spec.providers[0]} (session runs on {', '.join(in_force) or 'nothing'})"
        )

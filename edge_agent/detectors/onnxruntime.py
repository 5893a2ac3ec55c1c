"""onnxruntime back end: CPU everywhere; CUDA and TensorRT execution providers when the installed build has them."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge_agent import preprocess
from edge_agent.bundle import VerifiedBundle
from edge_agent.bundle.manifest import CPU_INT8_VARIANT
from edge_agent.detectors.base import Detector, DetectorOptions, DetectorUnavailable

logger = logging.getLogger(__name__)

try:
    import onnxruntime as ort
except ImportError as exc:  # guarded: the agent still starts and falls back (or says why it cannot)
    ort = None
    _IMPORT_ERROR = f"onnxruntime is not installed ({exc}); pip install 'starfish-edge[edge]'"
else:
    _IMPORT_ERROR = ""

# Preference order: TensorRT EP (fastest on Jetson/NVIDIA), CUDA, then CPU as the always-present fallback.
_PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxRuntimeDetector(Detector):
    name = "onnxruntime"

    @classmethod
    def default_variant(cls, bundle: VerifiedBundle, options: DetectorOptions) -> str:
        """On CPU only, the bundle's `int8_cpu` model instead of a default `int8`: onnxruntime's CPU kernels run the
        TensorRT-ready `int8` (zero-point-0 activations) as float convolutions plus Q/DQ, slower than fp32."""
        default = bundle.manifest.default_variant
        if default != "int8" or CPU_INT8_VARIANT not in bundle.manifest.variants:
            return default
        return CPU_INT8_VARIANT if _providers(options) == ["CPUExecutionProvider"] else default

    def __init__(self, bundle: VerifiedBundle, variant: str | None, options: DetectorOptions) -> None:
        super().__init__(bundle, variant, options)
        session_options = ort.SessionOptions()
        if options.threads:
            session_options.intra_op_num_threads = options.threads
            session_options.inter_op_num_threads = 1
        providers: list = []
        for provider in _providers(options):
            if provider == "TensorrtExecutionProvider":
                cache = ort_trt_cache_dir(bundle, options)
                providers.append((provider, {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)}))
            else:
                providers.append(provider)
        # From the verified bytes, not the path: a file swapped after verification cannot be what runs.
        model = bundle.read_variant(self.variant)
        try:
            self.session = ort.InferenceSession(model, session_options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors (Fail, InvalidGraph...)
            raise DetectorUnavailable(f"onnxruntime cannot load {self.model_path.name}: {exc}") from exc
        self.providers = self.session.get_providers()
        input_names = [i.name for i in self.session.get_inputs()]
        if preprocess.INPUT_NAME not in input_names:
            raise DetectorUnavailable(f"model input is {input_names}, expected {preprocess.INPUT_NAME!r}")
        self._outputs = list(bundle.manifest.outputs.names)
        logger.info("onnxruntime %s providers: %s", ort.__version__, ", ".join(self.providers))

    @classmethod
    def available(cls) -> tuple[bool, str]:
        if ort is None:
            return False, _IMPORT_ERROR
        return True, f"onnxruntime {ort.__version__}: {', '.join(ort.get_available_providers())}"

    def infer(self, tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        boxes, scores, labels = self.session.run(self._outputs, {preprocess.INPUT_NAME: tensor})
        return boxes, scores, labels

    def describe(self) -> dict:
        info = super().describe()
        info["providers"] = self.providers
        return info

    def close(self) -> None:
        # onnxruntime frees the session (and any GPU arena) when the last reference goes.
        self.session = None


def ort_trt_cache_dir(bundle: VerifiedBundle, options: DetectorOptions) -> Path:
    """Where onnxruntime's TensorRT execution provider caches engines.

    onnxruntime loads those engines without authenticating them (unlike `edge_agent.trt`'s MAC-checked cache), so
    by default they live in the device state directory (0700, checked by `ensure_state_dir`), where a bundle or
    another user cannot plant one; beside the bundle only when no state directory is known.
    """
    if options.engine_cache_dir is not None:
        return options.engine_cache_dir
    if options.state_dir is not None:
        from edge_agent.device_state import ensure_state_dir

        return ensure_state_dir(options.state_dir) / "ort-trt-engines"
    return bundle.engine_cache_dir()


def _providers(options: DetectorOptions) -> list[str]:
    """The execution providers this session will use, in order: the wanted ones this onnxruntime build has."""
    if ort is None:
        return []
    present = set(ort.get_available_providers())
    # `extra["providers"]` pins an exact list (benchmarks must not let "CPU" silently run on a GPU).
    return [p for p in (options.extra.get("providers") or _PROVIDER_ORDER) if p in present]

"""Static INT8 quantization of the exported detector to QDQ ONNX (onnxruntime.quantization).

Choices, and why:
* QDQ format: onnxruntime runs it with int8 kernels on CPU, and TensorRT's explicit quantization consumes the same
  file.
* Symmetric activations (``ActivationSymmetric``) and symmetric per-channel int8 weights: TensorRT requires zero
  point 0.
* Only Conv / MatMul / Gemm are quantized (where the time is); the detection tail (anchor decoding, NMS, RoIAlign,
  TopK, box decoding) stays float. The final predictors (RPN objectness/box deltas, box-head classifier/regressor)
  stay float too: they are tiny, and their outputs are scores and box deltas where int8 error shows directly.
* Calibration frames come from the training split, letterboxed exactly like deployment frames.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from edge_agent.preprocess import INPUT_NAME, letterbox
from export.onnx_export import ExportError, check_onnx

logger = logging.getLogger(__name__)

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
# With ``fuse_activations``: the ops between the convolutions get Q/DQ pairs too, so onnxruntime can fold ReLU6
# (Clip) into the QLinearConv's output range and run residual/top-down adds as QLinearAdd, instead of dequantizing
# after every convolution and quantizing again before the next one. Only inside the dense scopes: the detection
# tail's Add/Concat/Mul work on box coordinates and stay float.
CHAIN_OPS = ("Clip", "Relu", "Add", "Resize", "MaxPool")
DENSE_SCOPES = ("/backbone/", "/rpn/head/", "/roi_heads/box_head/")
# Weight name fragments of the layers kept in float (see module docstring).
FLOAT_TAIL = ("rpn.head.cls_logits", "rpn.head.bbox_pred", "roi_heads.box_predictor")
DEFAULT_CALIBRATION_FRAMES = 100
ACTIVATION_MODES = ("symmetric", "asymmetric")


class CalibrationError(ExportError):
    """No usable calibration data."""


def calibration_tensors(records: Sequence, count: int, width: int, height: int) -> list[np.ndarray]:
    """Letterbox ``count`` frames spread evenly over ``records`` (FrameRecords of the training split)."""
    from edge_agent.dataset import ImageDecodeError, load_image

    if count < 1:
        raise CalibrationError(f"calibration needs at least one frame, asked for {count}")
    if not records:
        raise CalibrationError("calibration data is empty: the training split has no frames")
    picks = np.unique(np.linspace(0, len(records) - 1, num=min(count, len(records))).round().astype(int))
    tensors = []
    for index in picks:
        try:
            frame = load_image(records[index].image_path)
        except ImageDecodeError as exc:
            logger.warning("calibration: skipping %s (%s)", records[index].image_path, exc)
            continue
        tensors.append(letterbox(frame, width, height)[0])
    if not tensors:
        raise CalibrationError(f"calibration data is empty: none of the {len(picks)} picked frames could be decoded")
    if len(tensors) < count:
        logger.warning("calibrating on %d frames (asked for %d)", len(tensors), count)
    return tensors


def random_calibration_frames(width: int, height: int, count: int = 8, seed: int = 0) -> list[np.ndarray]:
    """Noise frames: only for untrained demo/test models, which have no data to calibrate on."""
    rng = np.random.default_rng(seed)
    return [rng.random((1, 3, height, width), dtype=np.float32) for _ in range(count)]


def quantize_int8(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    frames: Sequence[np.ndarray],
    *,
    keep_tail_float: bool = True,
    per_channel: bool = True,
    method: str = "minmax",
    activations: str = "symmetric",
    fuse_activations: bool = True,
) -> Path:
    """Quantize ``fp32_path`` to a QDQ INT8 model at ``out_path`` (written atomically, checker-clean).

    ``activations``: ``"symmetric"`` (int8, zero point 0: what TensorRT's explicit quantization accepts) or
    ``"asymmetric"`` (uint8 with a zero point: onnxruntime's x86/ARM integer kernels run it, where they fall back to
    float for the symmetric model). Weights are per-channel symmetric int8 either way.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    if len(frames) == 0:
        raise CalibrationError("calibration data is empty: pass at least one frame")
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if method not in methods:
        raise CalibrationError(f"unknown calibration method {method!r}; choose one of {', '.join(methods)}")
    if activations not in ACTIVATION_MODES:
        raise CalibrationError(f"unknown activation mode {activations!r}; choose one of {', '.join(ACTIVATION_MODES)}")
    symmetric = activations == "symmetric"
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    check_onnx(fp32_path)
    shape = frames[0].shape
    if any(f.shape != shape or f.dtype != np.float32 for f in frames) or len(shape) != 4:
        raise CalibrationError(f"calibration frames must all be float32 [1,3,H,W] like the first ({shape})")

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[np.ndarray] = iter(frames)

        def get_next(self) -> dict[str, np.ndarray] | None:
            frame = next(self._it, None)
            return None if frame is None else {INPUT_NAME: frame}

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="starfish-int8-") as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        source = str(Path(fp32_path).resolve())
        try:
            # onnxruntime saves `sym_shape_infer_temp.onnx` (and its external data) into the working directory when
            # symbolic shape inference gives up: let that land in the temporary directory, not the caller's.
            with contextlib.chdir(tmp):
                quant_pre_process(source, str(prepped), skip_symbolic_shape=False)
        except Exception as exc:  # noqa: BLE001  symbolic shape inference gives up on some detection graphs
            logger.info("symbolic shape inference failed (%s); pre-processing without it", exc)
            quant_pre_process(source, str(prepped), skip_symbolic_shape=True)
        exclude = float_tail_nodes(prepped) if keep_tail_float else []
        op_types = list(QUANTIZED_OPS) + (list(CHAIN_OPS) if fuse_activations else [])
        include = dense_nodes(prepped, op_types, exclude) if fuse_activations else None
        staged = Path(tmp) / "int8.onnx"
        with _quiet_onnxruntime_logs():
            quantize_static(
                str(prepped),
                str(staged),
                _Reader(),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                nodes_to_quantize=include,
                per_channel=per_channel,
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=exclude,
                calibrate_method=methods[method],
                extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
            )
        check_onnx(staged, source=str(out_path))
        os.replace(staged, out_path) if _same_fs(staged, out_path) else _copy_atomic(staged, out_path)
    logger.info(
        "wrote INT8 QDQ model %s (%s activations, %.1f MB, %d calibration frames, %d nodes kept float)",
        out_path,
        activations,
        out_path.stat().st_size / 1e6,
        len(frames),
        len(exclude),
    )
    return out_path


class _DropOnnxruntimeInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno < logging.WARNING and "onnxruntime" in record.pathname)


@contextlib.contextmanager
def _quiet_onnxruntime_logs() -> Iterator[None]:
    """onnxruntime's quantizer logs one INFO line per rescaled bias channel to the *root* logger (thousands)."""
    handlers = logging.getLogger().handlers
    quiet = _DropOnnxruntimeInfo()
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


def float_tail_nodes(model_path: Path) -> list[str]:
    """Names of Conv/MatMul/Gemm nodes whose weights belong to the final predictors (kept float)."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    return [
        node.name
        for node in graph.node
        if node.op_type in QUANTIZED_OPS and any(part in name for name in node.input for part in FLOAT_TAIL)
    ]


def dense_nodes(model_path: Path, op_types: Sequence[str], exclude: Sequence[str]) -> list[str]:
    """Nodes of ``op_types`` inside the backbone, FPN, RPN head and box head, less ``exclude``."""
    import onnx

    skip = set(exclude)
    return [
        node.name
        for node in onnx.load(str(model_path)).graph.node
        if node.op_type in op_types and node.name.startswith(DENSE_SCOPES) and node.name not in skip
    ]


def _same_fs(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b.parent).st_dev


def _copy_atomic(src: Path, dest: Path) -> None:
    import shutil

    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

"""Boxes the model puts in the letterbox padding are dropped, not counted: the shared post-processing and a real
onnxruntime detector on a signed bundle whose ONNX graph always answers with the same boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent import preprocess
from edge_agent.bundle import load_bundle, load_private_key
from edge_agent.bundle.manifest import InputSpec, TrainingInfo
from edge_agent.bundle.writer import VariantSource, write_bundle
from edge_agent.detectors import DetectorOptions, create_detector

WIDTH, HEIGHT = 224, 128
# A 720x720 frame fits as 128x128 at the left of the 224x128 input: x in [128, 224) is padding.
RAW_BOXES = np.array(
    [
        [10, 10, 40, 40],  # on the image
        [150, 20, 200, 60],  # entirely in the padding
        [120, 20, 200, 60],  # 8 of 80 px wide on the image: mostly padding
        [100, 20, 140, 60],  # 28 of 40 px on the image: a real box reaching the edge, clipped
    ],
    np.float32,
)
RAW_SCORES = np.array([0.9, 0.9, 0.9, 0.9], np.float32)


def test_in_image_drops_boxes_in_the_padding() -> None:
    fit = preprocess.Letterbox(scale=128 / 720, source_width=720, source_height=720)
    assert preprocess.in_image(RAW_BOXES, fit).tolist() == [True, False, False, True]
    boxes, scores, labels = preprocess.postprocess(RAW_BOXES, RAW_SCORES, np.zeros(4, np.int64), fit, 0.5)
    assert len(boxes) == len(scores) == len(labels) == 2
    assert boxes[1, 2] == pytest.approx(720.0)  # clipped to the frame's right edge
    assert (boxes[:, 2] > boxes[:, 0]).all()


def _constant_model(path: Path) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    image = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, HEIGHT, WIDTH])
    outputs = [
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [len(RAW_BOXES), 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, [len(RAW_BOXES)]),
        helper.make_tensor_value_info("labels", TensorProto.INT64, [len(RAW_BOXES)]),
    ]
    # boxes = const + 0 * mean(images): the graph uses its input, as every exported detector does.
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["const_boxes", "nothing"], ["boxes"]),
        helper.make_node("Identity", ["const_scores"], ["scores"]),
        helper.make_node("Identity", ["const_labels"], ["labels"]),
    ]
    inits = [
        numpy_helper.from_array(np.float32(0.0), "zero"),
        numpy_helper.from_array(RAW_BOXES, "const_boxes"),
        numpy_helper.from_array(RAW_SCORES, "const_scores"),
        numpy_helper.from_array(np.ones(len(RAW_BOXES), np.int64), "const_labels"),
    ]
    graph = helper.make_graph(nodes, "constant-detector", [image], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_detector_does_not_count_boxes_in_the_padding(tmp_path: Path, bundle_keys) -> None:
    model = _constant_model(tmp_path / "constant.onnx")
    write_bundle(
        tmp_path / "bundle",
        name="constant",
        version=1,
        classes=["background", "starfish"],
        input_spec=InputSpec.for_size(WIDTH, HEIGHT),
        variants={"fp32": VariantSource(model)},
        score_threshold=0.5,
        training=TrainingInfo(config_digest="0" * 64, data_fingerprint=None, checkpoint_sha256=None),
        private_key=load_private_key(bundle_keys.private),
    )
    bundle = load_bundle(tmp_path / "bundle", [bundle_keys.public])
    detector = create_detector(["onnxruntime"], bundle, None, DetectorOptions(threads=1))
    detections = detector.detect(np.full((720, 720, 3), 80, np.uint8))
    assert len(detections) == 2
    assert (detections.boxes[:, 2] - detections.boxes[:, 0] >= 1).all()
    assert (detections.boxes <= 720).all()
    # A frame as wide as the input's aspect has no padding: all four boxes are on the image.
    assert len(detector.detect(np.full((128 * 4, 224 * 4, 3), 80, np.uint8))) == 4

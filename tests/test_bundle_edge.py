"""The real tiny bundle loads and runs on the edge side in a process where torch cannot be imported."""

from __future__ import annotations

import json

from tests.helpers.bundles import TinyBundle
from tests.helpers.no_torch import run_without_torch


def test_tiny_bundle_loads_and_runs_without_torch(tiny_bundle: TinyBundle) -> None:
    result = run_without_torch(
        f"""
        import json, sys
        import numpy as np
        import onnxruntime as ort
        from edge_agent.bundle import load_bundle
        from edge_agent.preprocess import boxes_to_source, letterbox

        bundle = load_bundle({str(tiny_bundle.path)!r}, [{str(tiny_bundle.public_key)!r}])
        spec = bundle.manifest.input
        session = ort.InferenceSession(str(bundle.variant_path()), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == [spec.name]
        assert list(session.get_inputs()[0].shape) == list(spec.shape)
        frame = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
        tensor, fit = letterbox(frame, spec.width, spec.height)
        boxes, scores, labels = session.run(list(bundle.manifest.outputs.names), {{spec.name: tensor}})
        mapped = boxes_to_source(boxes, fit)
        blank = session.run(None, {{spec.name: np.zeros(spec.shape, np.float32)}})
        print(json.dumps({{
            "torch_loaded": any(m.split(".")[0] == "torch" for m in sys.modules),
            "shapes": [list(boxes.shape), list(scores.shape), list(labels.shape)],
            "dtypes": [str(boxes.dtype), str(scores.dtype), str(labels.dtype)],
            "max_x": float(mapped[:, 2].max()) if len(mapped) else 0.0,
            "blank_ok": [a.ndim for a in blank] == [2, 1, 1],
        }}))
        """
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["torch_loaded"] is False
    n = out["shapes"][0][0]
    assert out["shapes"] == [[n, 4], [n], [n]]
    assert out["dtypes"] == ["float32", "float32", "int64"]
    assert out["max_x"] <= 1280.0
    assert out["blank_ok"] is True

"""Best F2 of the unpruned and both pruned checkpoints (their fp32 ONNX) on ood_test, the out-of-distribution set
never used for selection; writes ood_test_pruned.json beside this file. Run from the repository root."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from export import checks
from export.onnx_export import export_onnx
from export.runners import onnx_runner
from export.source import load_source
from train.config import config_from_dict
from train.data import ood_records

MODELS = {
    "unpruned": "models/generalize/best.ckpt",
    "round1": "/work/artifacts/prune/pruned.ckpt",  # shipped as models/generalize/pruned.ckpt
    "round2": "/work/artifacts/prune2/pruned.ckpt",
}


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    source = load_source(MODELS["unpruned"])
    cfg = config_from_dict(source.info["train_config"])
    cfg.data.ood_root, cfg.data.ood_limit = "/work/artifacts/ood_test", None
    frames = ood_records(cfg)
    out = {}
    for name, path in MODELS.items():
        onnx_path = export_onnx(load_source(path).model, f"/tmp/{name}.onnx", 1024, 576)
        predictions, truths = checks.predict(onnx_runner(onnx_path, 2), frames, 1024, 576)
        acc = checks.accuracy(predictions, truths).to_dict()
        out[name] = {k: acc[k] for k in ("best_f2", "best_threshold", "map50")}
        logging.info("%s on %d ood_test frames: %s", name, len(frames), out[name])
    (Path(__file__).parent / "ood_test_pruned.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

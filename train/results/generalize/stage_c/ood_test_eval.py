"""Best F2 on ood_test (900 frames, never used for any selection) of pruned checkpoints, through their fp32 ONNX.

    python train/results/generalize/stage_c/ood_test_eval.py OUT.json NAME=CKPT [NAME=CKPT ...]

Also the false positives per frame, recall and precision at IoU 0.5 at each model's best threshold. Results merge
into OUT.json (ood_test_fp32.json beside this file). Run from the repository root.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from edge_agent import metrics
from export import checks
from export.onnx_export import export_onnx
from export.runners import onnx_runner
from export.source import load_source
from train.config import config_from_dict
from train.data import ood_records

OOD_TEST = "/work/artifacts/ood_test"
WIDTH, HEIGHT = 1024, 576


def evaluate(path: str, onnx_path: Path) -> dict:
    source = load_source(path)
    cfg = config_from_dict(source.info["train_config"])
    cfg.data.ood_root, cfg.data.ood_limit = OOD_TEST, None
    frames = ood_records(cfg)
    export_onnx(source.model, onnx_path, WIDTH, HEIGHT)
    predictions, truths = checks.predict(onnx_runner(onnx_path, 1), frames, WIDTH, HEIGHT)
    acc = checks.accuracy(predictions, truths).to_dict()
    at_best = metrics.f2_score(predictions, truths, acc["best_threshold"])
    tp, fp, fn = at_best.tp[0.5], at_best.fp[0.5], at_best.fn[0.5]
    return {
        "checkpoint": path,
        "frames": len(frames),
        **{k: acc[k] for k in ("best_f2", "best_threshold", "map50")},
        "fp_per_frame_iou50_at_best": fp / len(frames),
        "recall_iou50_at_best": tp / max(tp + fn, 1),
        "precision_iou50_at_best": tp / max(tp + fp, 1),
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    out_path = Path(sys.argv[1])
    out = json.loads(out_path.read_text()) if out_path.exists() else {}
    for item in sys.argv[2:]:
        name, path = item.split("=", 1)
        out[name] = evaluate(path, Path("/tmp") / f"{name}.onnx")
        logging.info("%s: %s", name, out[name])
        out_path.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Is the out-of-distribution gap photometric? One ONNX model on the same ood_val frames after simple colour changes.

    python train/results/generalize/photometric_probe.py MODEL.onnx OUT.json [--ood-root DIR] [--frames N]

Best F2 per variant: as rendered, a percentile contrast stretch, darkened (gamma 1.8), and grey. A model that keeps
its F2 on grey frames finds starfish by shape; one that collapses there leans on the training palettes.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import cv2
import numpy as np

from edge_agent.dataset import ReefDataset
from export import checks
from export.runners import onnx_runner
from train.data import even_subset


def stretch(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, 1, axis=(0, 1)), np.percentile(image, 99, axis=(0, 1))
    return np.clip((image.astype(np.float32) - lo) / np.maximum(hi - lo, 1) * 255, 0, 255).astype(np.uint8)


def darken(image: np.ndarray) -> np.ndarray:
    return np.clip(255 * (image / 255.0) ** 1.8, 0, 255).astype(np.uint8)


def grey(image: np.ndarray) -> np.ndarray:
    return np.repeat(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[..., None], 3, axis=2)


VARIANTS = {"as_rendered": lambda image: image, "stretch": stretch, "darken": darken, "grey": grey}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--ood-root", type=Path, default=Path("/work/artifacts/ood_val"))
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    import onnx

    dims = onnx.load(str(args.model), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    height, width = dims[2].dim_value, dims[3].dim_value
    # The frames checkpoint selection scores (data.ood_limit's even subset).
    records = even_subset(list(ReefDataset.open(args.ood_root).records), args.frames)
    runner = onnx_runner(args.model, args.threads)
    out: dict[str, dict] = {"model": str(args.model), "frames": len(records), "variants": {}}
    for name, change in VARIANTS.items():
        predictions, truths = checks.predict(runner, records, width, height, transform=change)
        acc = checks.accuracy(predictions, truths).to_dict()
        out["variants"][name] = {k: acc[k] for k in ("best_f2", "best_threshold", "map50")}
        logging.info("%s: %s", name, out["variants"][name])
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

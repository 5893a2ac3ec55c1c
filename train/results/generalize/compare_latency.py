"""Eager-PyTorch latency of two checkpoints in one run: same frames, same threads, interleaved, medians.

python train/results/generalize/compare_latency.py A.ckpt B.ckpt --data ROOT --frames 20 --runs 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import cv2
import torch

from edge_agent.dataset import ReefDataset, load_image
from train.checkpoint import load_detector
from train.evaluation import to_tensor, working_sizes
from train.transforms import resize_to_working


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--data", required=True)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    records = ReefDataset.open(args.data).records
    step = max(1, len(records) // args.frames)
    frames = [cv2.cvtColor(load_image(r.image_path), cv2.COLOR_BGR2RGB) for r in records[::step][: args.frames]]
    models = {path: load_detector(path)[0].eval() for path in args.checkpoints}
    inputs = {}
    for path, model in models.items():
        lo, hi = working_sizes(model)
        inputs[path] = [
            to_tensor(resize_to_working(f, torch.zeros(0, 4).numpy(), lo, hi)[0], torch.device("cpu")) for f in frames
        ]
    times: dict[str, list[float]] = {p: [] for p in models}
    with torch.inference_mode():
        for path, model in models.items():  # warm-up: the first calls allocate
            model([inputs[path][0]])
        for _ in range(args.runs):
            for i in range(len(frames)):
                for path, model in models.items():
                    start = time.perf_counter()
                    model([inputs[path][i]])
                    times[path].append((time.perf_counter() - start) * 1000)
    summary = {p: {"median_ms": statistics.median(t), "calls": len(t)} for p, t in times.items()}
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()

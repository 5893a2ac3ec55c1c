#!/usr/bin/env bash
# One prepared GPU check for a CUDA machine with torch installed and no internet: the GPU test subset
# (pytest -m "gpu or tensorrt") and the GPU benchmarks (torch-cuda, ort-cuda, tensorrt-fp16/int8, ort-tensorrt,
# with ort-cpu beside them), all within 8 minutes; results under benchmarks/results/gpu/<card>-<time>/.
#
#   bash benchmarks/gpu_check.sh                 # defaults: 450 s budget, seeded 640x384 model
#   bash benchmarks/gpu_check.sh --quick         # tiny demo network (fastest)
#   bash benchmarks/gpu_check.sh --out "$OUT/gpu" --budget 420
#
# Works from a plain checkout (no `pip install -e .` needed): the repository root is put on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python3}"
# 480 s hard stop: the Python side plans for its --budget (450 s by default) and ends each step in time.
exec timeout --kill-after=10 480 "$PYTHON" -m benchmarks.gpu_check "$@"

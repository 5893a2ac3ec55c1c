#!/usr/bin/env bash
# Exact commands behind models/generalize/pruned.ckpt, demo bundle v7 (models/demo/) and
# benchmarks/results/amd-epyc-2c/demo-v7-threads2.* (CPU, 2-core machine). Data as in ../generalize/command.sh.
set -euo pipefail

# Prune models/generalize/best.ckpt (48 % fewer MACs) and fine-tune 2000 steps on its own training data and
# schedule (classic + randomized generator); the best in-distribution validation (step 1200) is kept.
starfish export prune models/generalize/best.ckpt --ratio 0.2 --fpn-ratio 0.5 --rpn-ratio 0.5 --head-ratio 0.5 \
  --steps 2000 --select val/f2 --eval-frames 100 --out /work/artifacts/prune/pruned.ckpt
# (tried, not shipped) a second round selected on the out-of-distribution validation set:
starfish export prune /work/artifacts/prune/pruned.ckpt --ratio 0 --fpn-ratio 0 --rpn-ratio 0 --head-ratio 0 \
  --steps 1200 --select val/select_f2 --set optim.lr=0.0003 --set optim.warmup_steps=20 \
  --set trainer.val_check_interval=300 --eval-frames 100 --out /work/artifacts/prune2/pruned.ckpt

# The measured half of the chain on the fine-tuned pruned model: unpruned rows, fp32/INT8/fp16, profiles, bundle.
starfish export all models/generalize/best.ckpt --pruned /work/artifacts/prune/pruned.ckpt \
  --key /work/artifacts/demo_key.pem --out /work/artifacts/export_v7 --eval-frames 100 --latency-runs 40 \
  --version 7 --threads 2

# The bench with the unpruned reference bundle written by export all, in the same run.
starfish bench models/demo --backends all --checkpoint models/generalize/best.ckpt --data /work/artifacts/synth12 \
  --video-ids 5 --accuracy-frames 100 --reference /work/artifacts/export_v7/reference-unpruned \
  --reference-label unpruned --key models/demo/demo_key.pub --baseline ort-cpu@unpruned --threads 2 \
  --iterations 30 --name demo-v7-threads2 -o benchmarks/results/amd-epyc-2c

# Out-of-distribution test set (ood_test, 900 frames, never used for selection): fp32 ONNX of each model, best F2
# (ood_test_pruned.json beside this file; the script: an onnx_runner + export.checks.accuracy loop over the frames).

# Demo bundle v8 (this commit's models/demo/): the same pruned checkpoint exported again with the lean detection tail
# (export/onnx_export.py: the RPN decodes only its per-level top-k anchors, one Gather merges the RoI levels; the
# same detections). Data regenerated with ../generalize/command.sh's first four commands (same seeds, identical
# frames); a new demo key (the v7 key's private half stayed on the machine that signed v7).
starfish keys generate --private /work/artifacts/demo_key.pem --public /work/artifacts/demo_key.pub
(cd /work/artifacts && starfish export all "$OLDPWD/models/generalize/best.ckpt" \
  --pruned "$OLDPWD/models/generalize/pruned.ckpt" --key /work/artifacts/demo_key.pem --out /work/artifacts/export_v8 \
  --eval-frames 100 --latency-runs 40 --version 8 --threads 2)
starfish bench models/demo --backends all --checkpoint models/generalize/best.ckpt --data /work/artifacts/synth12 \
  --video-ids 5 --accuracy-frames 100 --reference /work/artifacts/export_v8/reference-unpruned \
  --reference-label unpruned --key models/demo/demo_key.pub --baseline ort-cpu@unpruned --threads 2 \
  --iterations 30 --name demo-v8-threads2 -o benchmarks/results/amd-epyc-2c

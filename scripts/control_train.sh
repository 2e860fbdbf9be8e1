#!/usr/bin/env bash
# Train the built-in `shapes` model's ControlNet on the shapes world's control maps, then ship it as
# src/ssdxl/builtin/controlnets/shapes-<kind>/. Resumes an interrupted run, so it can simply be started again.
#
#   nohup bash scripts/control_train.sh > /tmp/ssdxl-controlnet.log 2>&1 &
#
# KIND (layout | edges), STEPS and WORK (where the run lives) may be set in the environment. The settings were
# sized on one CPU thread: batch 16 takes about 0.6 s a step there, so 4000 steps take about 45 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate

KIND=${KIND:-layout}
STEPS=${STEPS:-4000}
WORK=${WORK:-/tmp/ssdxl-controlnet}
OUT="$WORK/shapes-$KIND"
SHIP="src/ssdxl/builtin/controlnets/shapes-$KIND"

if [ -f "$OUT.run/checkpoints/finetune.pt" ]; then
    ssdxl finetune controlnet -o "$OUT" --resume --steps "$STEPS" --threads 1
else
    mkdir -p "$WORK"
    ssdxl finetune controlnet --model shapes --data shapes --control "$KIND" -o "$OUT" --steps "$STEPS" \
        --batch-size 16 --lr 1e-4 --lr-schedule cosine --warmup-steps 100 --caption-dropout 0.1 \
        --mixed-precision no --checkpoint-every 250 --log-every 50 --threads 1
fi
mkdir -p "$SHIP"
cp "$OUT/config.json" "$OUT/diffusion_pytorch_model.safetensors" "$OUT/ssdxl.json" "$SHIP/"
echo "shipped $SHIP"

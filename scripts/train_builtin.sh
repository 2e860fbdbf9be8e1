#!/usr/bin/env bash
# Train ssdxl's built-in model ("shapes") from scratch on the CPU, into $RUN (outside the repo).
#
#   scripts/train_builtin.sh              # a fresh run into /work/runs/builtin
#   RESUME=1 scripts/train_builtin.sh     # continue it after an interruption
#   FINETUNE=1 scripts/train_builtin.sh   # then the three fine-tuning runs that fixed two-object scenes
#   TINY_VAE=1 scripts/train_builtin.sh   # the tiny VAE of the installed built-in model (previews, --fast-decode)
#
# Then install the result as the package's default model:
#   rm -rf src/ssdxl/builtin/shapes && cp -r "$RUN/model" src/ssdxl/builtin/shapes
#
# One thread, not two: on the shared 2-core machine two OpenMP threads stall each other whenever
# another process holds a core (a UNet step measured 0.6 s with one thread, 0.75-7.9 s with two).
#
# How the shipped model was made (2026-11-23, machine shared with 3-4 other busy processes,
# load average 5-7; per-step figures are from $RUN/log.jsonl):
#   14:52  started this command with --vae-steps 2500 --steps 4000, but with an autoencoder that
#          trained on 32 px random crops (0.2 s/step). At step 2000 it measured 29.6 dB on crops
#          but only 22.7 dB on whole held-out images (GroupNorm statistics differ), so the crops
#          were removed from the code (whole images, batch 16, now the only way) and the run
#          resumed from its step-2000 checkpoint: 500 whole-image steps (0.5-0.7 s/step) took it
#          to 32.7 dB PSNR on held-out renders; the stage was ended there (vae_steps 2500).
#   15:08  denoiser: 1.3-3 s/step at batch 64 while the machine was busiest, 0.8 s/step when it
#          was quieter. The step count was re-planned at checkpoints (config.json edit + --resume;
#          the cosine schedule follows the new total): 4000 -> 2200 at step 500, -> 2600 at
#          step 1000, -> 3000 at step 1500, to end within ~85 minutes in all.
# This script is that recipe with the fixed autoencoder: expect ~15 min for the autoencoder
# (whole images cost ~2x the crops per step) and 40-75 min for the denoiser, depending on load.
set -euo pipefail
RUN=${RUN:-/work/runs/builtin}
export OMP_WAIT_POLICY=PASSIVE  # idle OpenMP threads sleep instead of spinning on a shared machine
mkdir -p "$RUN"
if [[ "${FINETUNE:-0}" == 1 ]]; then
  # 2026-11-23, one thread each, 0.9-1.4 s/step (docs/builtin-model.md has the figures per run):
  # more two-object scenes, then contrast captions (the relation reversed) at two weights.
  # The shipped weights are $RUN-contrast4/model. (The shipped chain took its middle run as the
  # step-500 checkpoint of a 1,500-step run, so its learning rate had not decayed yet.)
  common=(--two-object-fraction 0.8 --lr 3e-4 --threads 1)
  python -m ssdxl.cli.train --out "$RUN-pairs" --init "$RUN/model" --steps 1500 "${common[@]}"
  python -m ssdxl.cli.train --out "$RUN-contrast1" --init "$RUN-pairs/model" --steps 500 --contrast-weight 1 "${common[@]}"
  exec python -m ssdxl.cli.train --out "$RUN-contrast4" --init "$RUN-contrast1/model" --steps 1500 \
    --contrast-weight 4 --checkpoint-every 250 "${common[@]}"
fi
if [[ "${TINY_VAE:-0}" == 1 ]]; then
  # Distils src/ssdxl/builtin/shapes' VAE (the students share it). The shipped one (2026-11-30, one thread, load
  # average 4.5-5.5): the teacher taught 768 scenes in ~12 s, then 1200 steps at 0.16-0.26 s/step, 4 minutes in all;
  # 31.85 dB against the VAE's decode on 32 held-out scenes (the linear preview map: 22.13 dB). Install it with
  #   rm -rf src/ssdxl/builtin/tiny_vaes/taes-shapes && cp -r "$RUN-tiny-vae" src/ssdxl/builtin/tiny_vaes/taes-shapes
  exec python -m ssdxl.cli.main train tiny-vae --model shapes --out "$RUN-tiny-vae" --threads 1
fi
if [[ "${XL:-0}" == 1 ]]; then
  # The built-in family's teacher, shapes-xl (docs/builtin-model.md): src/ssdxl/builtin/shapes grown to SDXL's
  # transformer depths (new layers start as the identity) and a VAE that downsamples 8x, taught shapes' latent space at
  # 128x128, then the UNet trained on alone (the text towers stay shapes', so the folder borrows them). Its students
  # and LCM-LoRA: python scripts/distill_proof.py --ship. Install the teacher with
  #   rm -rf src/ssdxl/builtin/shapes-xl && mkdir src/ssdxl/builtin/shapes-xl &&
  #   cp -r "$RUN-xl/model/"{unet,vae,scheduler,model_index.json,ssdxl.json} src/ssdxl/builtin/shapes-xl/
  # and add "components_from": "shapes" to its ssdxl.json. Its tiny VAE (2026-12-01, 5 min on two threads, 30.7 dB):
  #   ssdxl train tiny-vae --model shapes-xl --out "$RUN-xl-tiny-vae" && cp -r "$RUN-xl-tiny-vae" \
  #     src/ssdxl/builtin/tiny_vaes/taes-shapes-xl
  exec python -m ssdxl.cli.train --out "$RUN-xl" --arch shapes-xl --init src/ssdxl/builtin/shapes --freeze-text \
    --vae-steps 1200 --steps 1500 --batch-size 32 --lr 2e-4 --two-object-fraction 0.6 --contrast-weight 4 \
    --checkpoint-every 250 --threads 1 --name shapes-xl
fi
if [[ "${RESUME:-0}" == 1 ]]; then
  exec python -m ssdxl.cli.train --out "$RUN" --resume
fi
exec python -m ssdxl.cli.train --out "$RUN" --data shapes --arch builtin \
  --vae-steps 2500 --steps 3000 --batch-size 64 --checkpoint-every 500 --threads 1 --seed 0

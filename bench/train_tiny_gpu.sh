#!/usr/bin/env bash
# The spire-tiny recipe on one GPU: every stage of a preset from scratch, then the fp16 model, in minutes.
#
#   bash bench/train_tiny_gpu.sh RUN PRESET [SCALE]      # e.g. RUN=runs/wide PRESET=tiny-wide
#
# SCALE multiplies every stage's minutes (1: 7.2 minutes of training in all, plus 15-35 s of start-up and export
# per stage, so about 9.5 minutes on an H200 shared with a second chain). The stages are the CPU
# recipe's (MODEL_CARD.md) with GPU batches: worker processes draw the crops and degradations (WORKERS, default
# 7), the forward passes run under bf16 autocast (PRECISION, default bf16; `spire-rt train --precision`), the
# one-step adaptor leg adds the rank objective (RANK_RATE, default 0.5, as the shipped model's legs (l) and (n')
# used), and the learning rates are raised for batches 8-16 times the CPU recipe's. The adaptor is shipped once
# before the decoder stage (RUN/ship_adaptor) and once after it (RUN/ship), so a run cut short still leaves a
# model. Environment: DEVICE (default cuda), WORKERS, SPIRE_RT (how to call the CLI; default python3 -m spire_rt.cli),
# MINUTES (the five stages' minutes before SCALE; default "1.4 1.3 0.6 3.0 0.9", what the H200 run of
# bench/results/experiments/gpu_recipe_h200 used).
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: bash bench/train_tiny_gpu.sh RUN PRESET [SCALE]" >&2
    exit 2
fi
run=$1 preset=$2 scale=${3:-1}
read -r vae_min prior_min diffusion_min one_step_min decoder_min <<<"${MINUTES:-1.4 1.3 0.6 3.0 0.9}"
# shellcheck source=bench/gpu_stages.sh
source "$(dirname "$0")/gpu_stages.sh"

stage vae vae --batch 128 --crop 64 --lr 2e-3 --minutes "$(minutes "$vae_min")"
stage prior prior --batch 128 --crop 64 --lr 1.5e-3 --minutes "$(minutes "$prior_min")"
# The diffusion form first, as on the CPU: it starts the adaptor's heads before the one-step legs.
stage adaptor-diffusion adaptor --batch 64 --crop 64 --lr 1e-3 --minutes "$(minutes "$diffusion_min")"
stage adaptor-one-step adaptor --resume --batch 128 --crop 64 --strength 0.04 0.08 --start-noise 0 \
    --loss-space pixel --single-rate 0.5 --rank-rate "${RANK_RATE:-0.5}" --lr 5e-4 --minutes "$(minutes "$one_step_min")"
"${spire[@]}" train --stage ship --out "$run" --ship-to "$run/ship_adaptor" --default-strength 0.06
stage decoder-landings decoder --batch 64 --crop 64 --landing-rate 0.8 --single-rate 0.5 --lr 3e-4 \
    --minutes "$(minutes "$decoder_min")"
"${spire[@]}" train --stage ship --out "$run" --ship-to "$run/ship" --default-strength 0.06
echo "$(date -u +%T) done: $run/ship"

#!/usr/bin/env bash
# A shipped model carried on, on one GPU: unpacked into a new run folder (`spire-rt train --stage unpack`), a
# one-step adaptor leg and a decoder leg (with its fidelity branch) on its own landings at GPU batches, then the
# fp16 model with FROM's restore defaults. Where train_tiny_gpu.sh starts over, this keeps the hours of training
# FROM already holds.
#
#   bash bench/finetune_tiny_gpu.sh RUN FROM [SCALE]      # e.g. FROM=spire_rt/weights/tiny
#
# The legs are the CPU legs that made the shipped model (MODEL_CARD.md, legs (y) and (ab)) with batches 16 and 8
# times theirs: 128 one-step pairs, 64 decoded crops; the adaptor leg trains the UNet too (--train-unet), as (y),
# and the decoder leg trains a fidelity branch with the decoder, every pair a landing (a FROM without one gets a
# fresh, zero-initialised one), as (ab).
# LR (default "2e-4 2.5e-4": the adaptor's twice the CPU leg's 1e-4; the decoder's the rate of the CPU decoder
# legs since (al), which leg (v) checked at this batch, where 5e-4 lost JPEG in leg (ac)) is not tuned on a GPU:
# a model that has trained for hours wants smaller steps than the from-scratch chain's.
# CROP (default 64, the CPU legs' crop): the training crops' side. The batches shrink with its square, so a step
# holds the pixels of 128 (adaptor) or 64 (decoder) crops of 64: CROP=128 trains on 32 and 16 crops of 128, with
# four times the context of the 64-pixel crops every leg before saw (a 256x256 restoration is 16 such crops).
# MINUTES: the two legs' minutes before SCALE (default "4.0 1.2"). The model is shipped after each leg
# (RUN/ship_adaptor, then RUN/ship), so a chain cut short still leaves one. Environment also as gpu_stages.sh
# (DEVICE, WORKERS, PRECISION, SPIRE_RT), and RANK_RATE (default 0.5, as the CPU legs).
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: bash bench/finetune_tiny_gpu.sh RUN FROM [SCALE]" >&2
    exit 2
fi
run=$1 from=$2 scale=${3:-1}
if [ ! -f "$from/spire.json" ]; then
    echo "finetune_tiny_gpu.sh: FROM=$from is not a model folder (no spire.json)" >&2
    exit 2
fi
# The preset the stages must be given, and the defaults the model is shipped with again (strength 0.06, the
# middle of the legs' --strength, where FROM records none).
defaults=$(python3 - "$from/spire.json" <<'PY'
import json
import sys

info = json.load(open(sys.argv[1]))
defaults = info.get("restore_defaults", {})
print(info["name"], defaults.get("strength", 0.06), defaults.get("ensemble", 1))
PY
)
read -r preset strength ensemble <<<"$defaults"
# shellcheck source=bench/gpu_stages.sh
source "$(dirname "$0")/gpu_stages.sh"
read -r adaptor_min decoder_min <<<"${MINUTES:-4.0 1.2}"
read -r adaptor_lr decoder_lr <<<"${LR:-2e-4 2.5e-4}"
ship=(--default-strength "$strength" --default-ensemble "$ensemble")
crop=${CROP:-64}
if ! [[ $crop =~ ^[0-9]+$ ]] || [ $(( crop % 8 )) -ne 0 ] || [ "$crop" -lt 32 ] || [ "$crop" -gt 256 ]; then
    echo "finetune_tiny_gpu.sh: CROP=$crop must be a multiple of 8 from 32 to 256" >&2
    exit 2
fi
adaptor_batch=$(( 128 * 64 * 64 / (crop * crop) )) decoder_batch=$(( 64 * 64 * 64 / (crop * crop) ))

echo "$(date -u +%T) unpack: $from (preset $preset, shipped again at strength $strength, ensemble $ensemble)," \
     "crop $crop, batches $adaptor_batch and $decoder_batch"
"${spire[@]}" train --stage unpack --from "$from" --out "$run"
stage adaptor-one-step adaptor --resume --batch "$adaptor_batch" --crop "$crop" --strength 0.04 0.08 --start-noise 0 \
    --loss-space pixel --single-rate 0.5 --rank-rate "${RANK_RATE:-0.5}" --lr "$adaptor_lr" --train-unet \
    --minutes "$(minutes "$adaptor_min")"
"${spire[@]}" train --stage ship --out "$run" --ship-to "$run/ship_adaptor" "${ship[@]}"
stage decoder-landings decoder --batch "$decoder_batch" --crop "$crop" --landing-rate 1 --fidelity --single-rate 0.5 \
    --lr "$decoder_lr" --minutes "$(minutes "$decoder_min")"
"${spire[@]}" train --stage ship --out "$run" --ship-to "$run/ship" "${ship[@]}"
echo "$(date -u +%T) done: $run/ship"

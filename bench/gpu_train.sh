#!/usr/bin/env bash
# Issue 5's GPU route in one device call: train a preset from scratch with bench/train_tiny_gpu.sh, or carry a
# shipped model on with bench/finetune_tiny_gpu.sh (FROM), inside a time limit; score what it shipped on the
# validation photographs, and pack the model and its logs into $OUT.
#
#   OUT=... bash bench/gpu_train.sh [PRESET]                        # from scratch; PRESET: default tiny-wide
#   OUT=... FROM=spire_rt/weights/tiny bash bench/gpu_train.sh      # carry the shipped model on
#
# Installs nothing (the device has no network): diffusers must already be importable. Through the device tool,
# with the wheels of diffusers and importlib-metadata downloaded into .whl/ as its README shows, one call does it
# all (carry [".whl"], timeout_s 590; the machine's start-up comes out of the 15 minutes as well):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#       .whl/*.whl && export PYTHONPATH=/tmp/site || exit; bash bench/gpu_train.sh tiny-wide
# Environment, besides the chains' own (WORKERS, PRECISION, RANK_RATE, MINUTES, DEVICE; finetune_tiny_gpu.sh's LR):
#   FROM     a model folder to carry on instead of training PRESET from scratch (its spire.json names the preset)
#   TRAIN_S  seconds the training chain may run before it is stopped (default 470: with start-up, scoring and
#            packing, the call fits the device's 600 s limit); a chain cut short still ships RUN/ship_adaptor
#   MINUTES  train_tiny_gpu.sh's five stage budgets (default "0.9 0.8 0.4 2.5 0.7": 318 s of training; the H200
#            run of bench/results/experiments/gpu_recipe_h200 spent about 130 s more starting, exporting and
#            shipping its stages, so the chain ends about 450 s in); with FROM, finetune_tiny_gpu.sh's two legs
#            (default "4.0 1.2": 312 s of training, and four stage starts instead of seven)
#   SCALE    the chain's minutes multiplier (default 1)
#   RUN      the run folder (default /tmp/spire_gpu_run, replaced each time; a RUN you name must not exist yet)
#   SPIRE_RT how to call the CLI, here and in the chain (default python3 -m spire_rt.cli)
# Writes to $OUT (at most 8 files, as the device returns them): versions.txt, chain.log, validation.md and
# run.tar.* (15 MiB parts of RUN's shipped folders, its stage logs and the validation JSON; when the chain stopped
# before shipping its decoder leg, also RUN's model, vae and fidelity). On this side:
#   cat run.tar.* | tar xf -        # then bash bench/score_candidate.sh run/ship OUT, on the CPU the rules use
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:-tiny-wide}
out=${OUT:?set OUT to the folder the device returns}
run=${RUN:-/tmp/spire_gpu_run}
# Only the default run folder is the script's own to replace, and an earlier call's parts must not mix with this
# call's (cat run.tar.* would join them).
if [ -n "${RUN:-}" ] && [ -e "$RUN" ]; then
    echo "gpu_train.sh: RUN=$RUN already exists; name a folder that does not (the run folder is replaced)" >&2
    exit 2
fi
if [ -n "${FROM:-}" ] && [ ! -f "$FROM/spire.json" ]; then
    echo "gpu_train.sh: FROM=$FROM is not a model folder (no spire.json)" >&2
    exit 2
fi
earlier=$(cd "$out" 2>/dev/null && ls -d versions.txt chain.log validation.md run.tar.* 2>/dev/null | xargs) || true
if [ -n "$earlier" ]; then
    echo "gpu_train.sh: $out already holds an earlier call's $earlier; give another OUT" >&2
    exit 2
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${FROM:-}" ]; then
    chain=(bash bench/finetune_tiny_gpu.sh "$run" "$FROM" "${SCALE:-1}") minutes="4.0 1.2" what="from $FROM"
else
    chain=(bash bench/train_tiny_gpu.sh "$run" "$preset" "${SCALE:-1}") minutes="0.9 0.8 0.4 2.5 0.7" what="preset $preset"
fi
export WORKERS=${WORKERS:-14} MINUTES=${MINUTES:-$minutes} SPIRE_RT=${SPIRE_RT:-python3 -m spire_rt.cli}
read -r -a spire <<<"$SPIRE_RT"
mkdir -p "$out"
rm -rf "$run"

{
    python3 -c "import torch, diffusers, skimage; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
'skimage', skimage.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
    echo "$what, MINUTES $MINUTES, SCALE ${SCALE:-1}, WORKERS $WORKERS, PRECISION ${PRECISION:-bf16}," \
         "RANK_RATE ${RANK_RATE:-0.5}, TRAIN_S ${TRAIN_S:-470}"
} > "$out/versions.txt" 2>&1
cat "$out/versions.txt"

started=$(date +%s)
status=0
timeout "${TRAIN_S:-470}" "${chain[@]}" > "$out/chain.log" 2>&1 || status=$?
pkill -f "spire_rt.cli train" 2>/dev/null || true  # a stage's batch workers outlive a timeout of its parent
echo "chain: exit status $status after $(( $(date +%s) - started )) s" | tee -a "$out/chain.log"

model=$run/ship
[ -f "$model/spire.json" ] || model=$run/ship_adaptor
if [ ! -f "$model/spire.json" ]; then
    echo "no shipped model: the chain stopped before its one-step adaptor leg ended" | tee -a "$out/chain.log"
    tail -n 20 "$out/chain.log"
    exit 1
fi
device=$(python3 -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
"${spire[@]}" eval --model "$model" --images skimage-validation --device "$device" --out "$run/validation" --quiet
cp "$run/validation/results.md" "$out/validation.md"

# A shipped model is 14-22 MB; the device returns files of at most 16 MiB each, so the pack goes in parts.
# A chain stopped in its decoder leg, or after it but before shipping, holds that leg's weights in RUN/vae and
# RUN/fidelity only (the H200 call of bench/results/experiments/gpu_leg_bh lost a 624-step leg so): pack them
# with RUN/model, to be shipped on this side.
unshipped=
if [ ! -f "$run/ship/spire.json" ] && [ -f "$run/decoder.jsonl" ]; then
    unshipped=1
    echo "the decoder leg was not shipped: run.tar.* holds RUN's model, vae and fidelity; ship them here with" \
         "spire-rt train --stage ship --out run --ship-to DIR (and the chain's --default-strength / --default-ensemble)" \
        | tee -a "$out/chain.log"
fi
(
    cd "$run"
    packed=(ship* ./*.jsonl validation/results.json)
    if [ -n "$unshipped" ]; then
        for part in model vae fidelity; do if [ -d "$part" ]; then packed+=("$part"); fi; done
    fi
    tar cf - "${packed[@]}"
) | split -b 15M - "$out/run.tar."
ls -la "$out"
tail -n 12 "$out/chain.log"
echo "model: $model"
python3 - "$run/validation/results.json" <<'PY'
import json
import sys

from spire_rt.evaluation.benchmark import quoted_gains

gains, mean = quoted_gains(json.load(open(sys.argv[1]))["summary"])
print("| family | gain (dB) |\n| --- | --- |")
for family, gain in gains.items():
    print(f"| {family} | {gain:+.2f} |")
print(f"| mean | {mean:.3f} |")
PY

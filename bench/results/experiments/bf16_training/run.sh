#!/usr/bin/env bash
# Step time and loss of --precision fp32 against bf16 on this machine, side by side: the adaptor's one-step leg
# (leg (n')'s options) and the decoder's landing leg (leg (o)'s), each from the shipped spire-tiny, each precision
# twice in the order fp32, bf16, bf16, fp32, at a learning rate too small to move the weights much.
#   bash run.sh LOGS     # LOGS: a folder for the JSON-lines logs
set -euo pipefail
logs=$1 base=/tmp/bf16_base
mkdir -p "$logs"
rm -rf "$base"
python3 "$(dirname "$0")/../gpu_recipe_h200/make_cpu_run.py" spire_rt/weights/tiny "$base" > /dev/null
for run in 1 2 3 4; do
    prec=$([ "$run" = 1 ] || [ "$run" = 4 ] && echo fp32 || echo bf16)
    for stage in adaptor decoder; do
        rm -rf /tmp/bf16_run && cp -r "$base" /tmp/bf16_run
        if [ "$stage" = adaptor ]; then
            options=(--resume --steps 60 --strength 0.04 0.08 --start-noise 0 --loss-space pixel --single-rate 0.5
                     --rank-rate 0.5 --lr 1e-5)
        else
            options=(--steps 80 --landing-rate 0.8 --single-rate 0.5 --lr 1e-6)
        fi
        spire-rt train --stage "$stage" --out /tmp/bf16_run "${options[@]}" --eval-minutes 0 --quiet \
            --precision "$prec" > /dev/null
        cp "/tmp/bf16_run/$stage.jsonl" "$logs/${stage}_${run}_$prec.jsonl"
        python3 -c "
import json, sys
records = [json.loads(line) for line in open('$logs/${stage}_${run}_$prec.jsonl')]
steps = [r for r in records if 'loss' in r]
final = records[-1]
print('$stage', '$prec', f\"{final['elapsed_s'] / final['step']:.3f} s/step\", f\"mean loss {sum(r['loss'] for r in steps) / len(steps):.4f}\")"
    done
done

# Device command: the decoder-landing stage for a shipped candidate (.whl/cand/wide), then ship it to $OUT.
set -euo pipefail
export PYTHONUNBUFFERED=1
run=/tmp/run_wide
rm -rf $run; mkdir -p $run
cp -r .whl/cand/wide $run/model
cp -r .whl/cand/wide/vae $run/vae
(timeout 175 python3 -m spire_rt.cli train --stage decoder --out $run --device ${DEVICE:-cuda} --workers ${WORKERS:-14} \
    --eval-minutes 0 --quiet --batch 128 --crop 64 --landing-rate 0.8 --single-rate 0.5 --lr 5e-4 \
    --minutes ${MINUTES:-2.5} --checkpoint-minutes 1 | tail -n 1) || echo 'decoder stage stopped at its time limit'
python3 -m spire_rt.cli train --stage ship --out $run --ship-to $run/ship --default-strength 0.06
cp $run/decoder.jsonl ${OUT:-/tmp}/decoder.jsonl
tar cf - -C $run ship | split -b 15M - ${OUT:-/tmp}/ship.tar.

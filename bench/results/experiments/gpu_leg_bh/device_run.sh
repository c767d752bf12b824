# Device command of this session (not part of the project: an orchestration of two project scripts on one H200).
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#       .whl/*.whl && export PYTHONPATH=/tmp/site || exit; bash bench/results/experiments/gpu_leg_bh/device_run.sh
# 1. issue 4's GPU check alone on the GPU (bench/gpu_check.sh --quick with the torch.compile row and only the
#    64x64 decoder-entry kernel rows), into $OUT/check;
# 2. legs (bh) + (bi) (bench/finetune_tiny_gpu.sh, decision_record.txt) in what the call's 575 s leave, with
#    pytest tests/kernels tests/fast beside them (their log: $OUT/tests.log); the shipped models and the chain's
#    logs are packed into $OUT/legs.tar.* (15 MiB parts; the device returns files of at most 16 MiB).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
started=$(date +%s)
elapsed() { echo $(( $(date +%s) - started )); }
{
    python3 -c "import torch, diffusers, skimage, triton; print('torch', torch.__version__, 'triton', triton.__version__,
'diffusers', diffusers.__version__, 'skimage', skimage.__version__, torch.cuda.get_device_name())"
    nvidia-smi
    nproc
} > "$OUT/versions.txt" 2>&1
head -n 1 "$OUT/versions.txt"

timeout 280 bash bench/gpu_check.sh --out "$OUT/check" --budget-s 250 --quick --tests none \
    --kernels "decoder_entry 64x64 640+320,copy" > /tmp/check.out 2>&1
echo "gpu_check: exit status $? after $(elapsed) s"

# The chain gets what is left of 575 s, less 30 s to pack; its stage start-ups and shipping take about 90 s.
train_s=$(( 575 - $(elapsed) - 30 ))
read -r adaptor_min decoder_min <<<"$(python3 -c "t = max($train_s - 90, 30) / 60; print(round(0.8 * t, 2), round(0.2 * t, 2))")"
echo "chain: $train_s s, MINUTES $adaptor_min $decoder_min"
mkdir -p /tmp/legs
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 15 > /tmp/legs/gpu_util.csv &
sampler=$!
timeout $(( train_s - 15 )) python3 -m pytest -q -p no:cacheprovider -rfEs -n 4 tests/kernels tests/fast \
    > "$OUT/tests.log" 2>&1 &
tests=$!
WORKERS=10 LR="2e-4 2.5e-4" MINUTES="$adaptor_min $decoder_min" CROP=64 \
    timeout "$train_s" bash bench/finetune_tiny_gpu.sh /tmp/legs/bh spire_rt/weights/tiny > /tmp/legs/chain.log 2>&1
echo "chain: exit status $? after $(elapsed) s" | tee -a /tmp/legs/chain.log
pkill -f "spire_rt.cli train" || true  # a stage's batch workers outlive a timeout of their parent
wait $tests
kill $sampler
cp /tmp/legs/chain.log "$OUT/chain.log"
cd /tmp/legs && tar cf - bh/ship* bh/*.jsonl chain.log gpu_util.csv | split -b 15M - "$OUT/legs.tar."
ls -la "$OUT" "$OUT/check"
tail -n 3 "$OUT/tests.log"
tail -n 8 /tmp/legs/chain.log
tail -n 32 /tmp/check.out

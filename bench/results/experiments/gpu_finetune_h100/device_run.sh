# Device command for legs (ai) and (aj) (not part of the project: an orchestration of bench/finetune_tiny_gpu.sh).
# Two chains carry the shipped spire-tiny on at the same time on one GPU, sharing it and its 16 cores: (ai) at the
# CPU legs' 64-pixel crops, (aj) at 128-pixel crops with a quarter of the batch (the same pixels per step). Each
# packs its last shipped model (ship after its decoder leg, else ship_adaptor) and its logs into $OUT.
#   python3 -m pip install ... .whl/*.whl && export PYTHONPATH=/tmp/site; bash bench/results/experiments/gpu_finetune_h100/device_run.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" WORKERS=${WORKERS:-7} LR=${LR:-2e-4 2.5e-4} MINUTES=${MINUTES:-4.5 1.2}
{
    python3 -c "import torch, diffusers, skimage; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
'skimage', skimage.__version__, torch.cuda.get_device_name())"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    nproc
    echo "WORKERS $WORKERS, LR $LR, MINUTES $MINUTES, RANK_RATE ${RANK_RATE:-0.5}, PRECISION ${PRECISION:-bf16}"
} > "$OUT/versions.txt" 2>&1
cat "$OUT/versions.txt"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 20 > "$OUT/gpu_util.csv" &
sampler=$!
started=$(date +%s)
rm -rf /tmp/legs && mkdir -p /tmp/legs
CROP=64 timeout 505 bash bench/finetune_tiny_gpu.sh /tmp/legs/ai spire_rt/weights/tiny > /tmp/legs/ai.log 2>&1 &
ai=$!
CROP=128 timeout 505 bash bench/finetune_tiny_gpu.sh /tmp/legs/aj spire_rt/weights/tiny > /tmp/legs/aj.log 2>&1 &
aj=$!
wait $ai $aj
pkill -f "spire_rt.cli train" || true  # a stage's batch workers outlive a timeout of their parent
kill $sampler
echo "chains ended after $(( $(date +%s) - started )) s"
cd /tmp/legs
picked=()
for leg in ai aj; do
    cp $leg.log $leg/chain.log
    if [ -f $leg/ship/spire.json ]; then picked+=($leg/ship); else picked+=($leg/ship_adaptor); fi
    picked+=($leg/chain.log $leg/adaptor.jsonl)
    [ -f $leg/decoder.jsonl ] && picked+=($leg/decoder.jsonl)
done
tar cf - "${picked[@]}" | split -b 15M - "$OUT/legs.tar."
ls -la "$OUT"
for leg in ai aj; do echo "== $leg"; tail -n 8 $leg.log; done

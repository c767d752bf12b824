# Device command for the GPU training run (not part of the project: an orchestration of bench/train_tiny_gpu.sh).
export PYTHONUNBUFFERED=1 WORKERS=6
nvidia-smi > $OUT/nvidia_smi.txt
python3 -c "import torch, triton, diffusers, skimage; print(torch.__version__, diffusers.__version__, skimage.__version__, torch.cuda.get_device_name())" | tee $OUT/versions.txt
(sleep 240; nvidia-smi >> $OUT/nvidia_smi.txt) &
timeout 505 bash bench/train_tiny_gpu.sh runs/wide tiny-wide 1 > runs_wide.log 2>&1 &
timeout 505 bash bench/train_tiny_gpu.sh runs/tiny tiny 1 > runs_tiny.log 2>&1 &
wait
pkill -f spire_rt.cli || true
for r in wide tiny; do
  [ -d runs/$r/ship ] && rm -rf runs/$r/ship_adaptor
  cp runs_$r.log runs/$r/chain.log
done
tar cf - runs/*/ship* runs/*/*.jsonl runs/*/chain.log | split -b 15M - $OUT/runs.tar.
ls -la $OUT
tail -n 20 runs_wide.log runs_tiny.log

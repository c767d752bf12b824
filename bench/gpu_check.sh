#!/usr/bin/env bash
# Issue 4's GPU check in one command (see bench/gpu_check.py): installs nothing; JSON and log land in $OUT, or in
# bench/results/<date> when OUT is unset. Extra arguments go to the script (--smoke runs it on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/results/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec python3 bench/gpu_check.py --out "$out" "$@"

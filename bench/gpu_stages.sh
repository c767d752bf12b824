# How a GPU training chain calls the CLI, sourced by bench/train_tiny_gpu.sh and bench/finetune_tiny_gpu.sh (not
# run on its own). The sourcing script sets run, preset and scale first. Environment: SPIRE_RT (how to call the
# CLI; default python3 -m spire_rt.cli), DEVICE (default cuda), WORKERS (batch-drawing processes per stage,
# default 7), PRECISION (default bf16; `spire-rt train --precision`).
read -r -a spire <<<"${SPIRE_RT:-python3 -m spire_rt.cli}"
common=(--preset "$preset" --out "$run" --device "${DEVICE:-cuda}" --workers "${WORKERS:-7}" --eval-minutes 0
        --precision "${PRECISION:-bf16}" --quiet)
minutes() { python3 -c "print(round(float('$1') * $scale, 3))"; }
stage() {  # stage NAME OPTIONS...: train one stage and say how far it got
    local name=$1
    shift
    echo "$(date -u +%T) $name: $*"
    "${spire[@]}" train --stage "$@" "${common[@]}" | tail -n 1
}

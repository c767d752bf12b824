#!/usr/bin/env bash
# Score a candidate spire-tiny model the way its ship rules read it (MODEL_CARD.md,
# bench/results/experiments/): the mean gain over the six families on the validation photographs at the
# model's own defaults, and the prompted sweeps of camera and motorcycle_left against the guard: each sweep
# `monotonic` as eval's sweep.json records it (noise rho -0.9 or stronger, blur rho +0.9 or stronger).
#
#   bash bench/score_candidate.sh MODEL OUT     # MODEL: a shipped folder, e.g. RUN/ship (train --stage ship)
#
# Writes OUT/validation/ and OUT/sweep/IMAGE/ (eval refuses to replace an earlier run's results) and prints
# the numbers a rule compares. The held-out photographs are not touched: they are scored only after a rule
# has decided. Environment: SPIRE_RT (how to call the CLI; default spire-rt), STRENGTH (default: the model's),
# MIXED_DRAWS (two-stage draws per photograph in the mixed families; default 1, what rules before 2026-11-28
# 08:40 UTC were scored with).
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: bash bench/score_candidate.sh MODEL OUT" >&2
    exit 2
fi
model=$1 out=$2
read -r -a spire <<<"${SPIRE_RT:-spire-rt}"
strength=()
if [ -n "${STRENGTH:-}" ]; then strength=(--strength "$STRENGTH"); fi
validation=(--model "$model" --images skimage-validation "${strength[@]}" --quiet)

"${spire[@]}" eval "${validation[@]}" --mixed-draws "${MIXED_DRAWS:-1}" --out "$out/validation"
for image in camera motorcycle_left; do
    "${spire[@]}" eval "${validation[@]}" --sweep --sweep-image "$image" --out "$out/sweep/$image"
done

python3 - "$out" <<'PY'
import json
import sys
from pathlib import Path

from spire_rt.evaluation.benchmark import quoted_gains

out = Path(sys.argv[1])
gains, mean = quoted_gains(json.loads((out / "validation" / "results.json").read_text())["summary"])
print(f"validation mean gain {mean:.3f} dB  {gains}")
inside = True
for folder in sorted((out / "sweep").iterdir()):
    sweeps = json.loads((folder / "sweep.json").read_text())["sweeps"]
    rhos = {name: round(sweep["spearman_rho"], 3) for name, sweep in sweeps.items()}
    ok = all(sweep["monotonic"] for sweep in sweeps.values())  # evaluation/sweep.py applies the guard's bound
    inside &= ok
    print(f"sweep {folder.name}: {rhos} {'inside' if ok else 'OUTSIDE'} the guard")
print("guard: " + ("inside" if inside else "OUTSIDE"))
PY

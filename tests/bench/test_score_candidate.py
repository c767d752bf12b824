"""bench/score_candidate.sh: the numbers a ship rule reads, from eval's own output files.

A stand-in for the CLI writes those files with known values, so the test checks the script's own work (which
evals it runs, the mean it reports, the guard it applies) in a second, without restoring anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "score_candidate.sh"
GAINS = {"denoise_0.10": 8.0, "deblur_2.0": 2.0, "dejpeg_20": 1.0, "upsample_2x": 0.0, "mixed": 1.5,
         "mixed_blind": 1.5}

STAND_IN = '''
import json, os, sys
from pathlib import Path
args = sys.argv[1:]
out = Path(args[args.index("--out") + 1])
out.mkdir(parents=True)
with open(os.environ["CALLS"], "a") as calls:
    calls.write(" ".join(args) + "\\n")
if "--sweep" in args:
    image = args[args.index("--sweep-image") + 1]
    rhos = dict(zip(("denoise", "deblur"), json.loads(os.environ["RHOS"])[image]))
    signs = {"denoise": -1, "deblur": +1}  # as evaluation/sweep.py records a sweep
    sweeps = {name: {"spearman_rho": rho, "expected_sign": signs[name], "monotonic": rho * signs[name] >= 0.9}
              for name, rho in rhos.items()}
    (out / "sweep.json").write_text(json.dumps({"image": image, "sweeps": sweeps}))
else:
    gains = json.loads(os.environ["GAINS"])
    summary = {family: {"model_gain_db": gain} for family, gain in gains.items()}
    (out / "results.json").write_text(json.dumps({"summary": summary}))
'''


def score(tmp_path: Path, rhos: dict, *extra_env: tuple[str, str]) -> tuple[str, list[str]]:
    stand_in = tmp_path / "stand_in.py"
    stand_in.write_text(STAND_IN)
    calls = tmp_path / "calls.txt"
    env = {**os.environ, "SPIRE_RT": f"{sys.executable} {stand_in}", "CALLS": str(calls),
           "GAINS": json.dumps(GAINS), "RHOS": json.dumps(rhos), **dict(extra_env)}
    result = subprocess.run(["bash", str(SCRIPT), "some/model", str(tmp_path / "out")], env=env,
                            capture_output=True, text=True, check=True)
    return result.stdout, calls.read_text().splitlines()


def test_inside_the_guard(tmp_path):
    stdout, calls = score(tmp_path, {"camera": [-0.927, 0.976], "motorcycle_left": [-0.964, 0.9]})
    assert "validation mean gain 2.333 dB" in stdout
    assert "sweep camera: {'denoise': -0.927, 'deblur': 0.976} inside the guard" in stdout
    assert stdout.strip().endswith("guard: inside")
    # One validation eval at the model's defaults, then one sweep per guarded photograph; no held-out image.
    assert len(calls) == 3
    assert all("--model some/model --images skimage-validation" in call for call in calls)
    assert [call.split("--sweep-image ")[1].split()[0] for call in calls[1:]] == ["camera", "motorcycle_left"]
    assert not any("--strength" in call for call in calls)


@pytest.mark.parametrize("rhos", [{"camera": [-0.879, 0.976], "motorcycle_left": [-0.964, 0.929]},
                                  {"camera": [-0.927, 0.976], "motorcycle_left": [-0.964, 0.85]}])
def test_either_sweep_out_of_the_guard_fails_it(tmp_path, rhos):
    stdout, _ = score(tmp_path, rhos)
    assert "OUTSIDE the guard" in stdout
    assert stdout.strip().endswith("guard: OUTSIDE")


def test_strength_is_passed_to_every_eval(tmp_path):
    _, calls = score(tmp_path, {"camera": [-1, 1], "motorcycle_left": [-1, 1]}, ("STRENGTH", "0.04"))
    assert all("--strength 0.04" in call for call in calls)


def test_usage(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT), "only-one"], check=False, capture_output=True, text=True)
    assert result.returncode == 2
    assert "usage: bash bench/score_candidate.sh MODEL OUT" in result.stderr

"""Does a second pass help the one-step model: restore, then restore the restoration again?

For the validation photographs' benchmark cases (eval's own degradations), through the product's Restorer at the
model's defaults (ensemble 2, colour fix):
  one pass   what `spire-rt restore` gives (eval's `model`)
  blind 2nd  that output restored again with "Remove all degradation" (what is left is no longer the stated
             degradation, so the second pass is not told one)
PSNR in dB against the clean crop, means over the images.   python two_pass_probe.py MODEL_FOLDER [FAMILY ...]
"""

import sys

import numpy as np

from spire_rt.evaluation.benchmark import FAMILIES, build_cases, restore_with_model
from spire_rt.evaluation.cli import load_images
from spire_rt.evaluation.metrics import as_float, psnr
from spire_rt.pipeline import Restorer
from spire_rt.prompts import BLIND_PROMPT

restorer = Restorer.from_pretrained(sys.argv[1], backend="onnxruntime", device="cpu")
families = tuple(sys.argv[2:]) or tuple(FAMILIES)

rows = {}
for case in build_cases(load_images("skimage-validation"), seed=0, families=families):
    once = restore_with_model(restorer, case, {})
    twice = as_float(restorer(once, restore=BLIND_PROMPT))
    scores = {"degraded": psnr(case.clean, case.upsampled), "one_pass": psnr(case.clean, once),
              "blind_2nd": psnr(case.clean, twice)}
    rows.setdefault(case.family, []).append(scores)
    print(case.image, case.family, {k: round(v, 2) for k, v in scores.items()}, flush=True)

for family, scores in rows.items():
    means = {key: float(np.mean([s[key] for s in scores])) for key in scores[0]}
    print(f"{family:14s} " + "  ".join(f"{k} {v:6.2f}" for k, v in means.items()))

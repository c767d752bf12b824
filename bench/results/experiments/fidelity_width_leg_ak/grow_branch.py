"""Widen a trained fidelity branch without changing what it does: RUN/fidelity (width W) -> width W2 > W.

The widening is FidelityBranch.widened (spire_rt/models/fidelity.py), which `spire-rt train --stage decoder
--fidelity --fidelity-width W2` now does inside the stage. Legs (ak) and (al) ran this script before that option
existed; the weights it writes are the same (the new channels' initialisation is drawn after seed 0 here).
    python grow_branch.py RUN WIDTH      # replaces RUN/fidelity (copy it first)
"""

import shutil
import sys
from pathlib import Path

import torch

from spire_rt.models.fidelity import FidelityBranch

run, width = Path(sys.argv[1]), int(sys.argv[2])
old = FidelityBranch.from_pretrained(run / "fidelity")
if width <= old.config.width:
    raise SystemExit(f"width {width} is not wider than the branch's {old.config.width}")
torch.manual_seed(0)
new = old.widened(width)

probe = torch.rand(1, 3, 64, 64) * 2 - 1
with torch.no_grad():
    for a, b in zip(old(probe), new(probe)):
        assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())
shutil.rmtree(run / "fidelity")
new.save_pretrained(run / "fidelity", safe_serialization=True)
print(f"{run / 'fidelity'}: width {old.config.width} -> {width}, {sum(p.numel() for p in new.parameters())} "
      "parameters, same outputs on a probe")

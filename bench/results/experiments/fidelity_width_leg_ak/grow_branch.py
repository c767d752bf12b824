"""Widen a trained fidelity branch without changing what it does: RUN/fidelity (width W) -> width W2 > W.

The old channels keep their weights and never read the new ones (those weights are zero); the new channels start
from a fresh convolution's initialisation but reach the decoder only through head weights that start at zero. So
the grown branch decodes exactly as the old one, and a decoder leg can then use the added width where it helps.
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
new = FidelityBranch(old.config.image_channels, width, tuple(old.config.point_channels))
keep = old.config.width


@torch.no_grad()
def graft(new_conv, old_conv, reads_old_only=True):
    out_old, in_old = old_conv.weight.shape[:2]
    new_conv.weight[:out_old, :in_old] = old_conv.weight
    if reads_old_only:  # old output channels must not read the new input channels
        new_conv.weight[:out_old, in_old:] = 0
    new_conv.bias[:out_old] = old_conv.bias


graft(new.stem[0], old.stem[0])
for index in (0, 2, 4):
    graft(new.context[index], old.context[index])
with torch.no_grad():
    for new_head, old_head in zip(new.heads, old.heads):
        new_head.weight.zero_()
        new_head.weight[:, :keep] = old_head.weight
        new_head.bias.copy_(old_head.bias)

probe = torch.rand(1, 3, 64, 64) * 2 - 1
with torch.no_grad():
    for a, b in zip(old(probe), new(probe)):
        assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())
shutil.rmtree(run / "fidelity")
new.save_pretrained(run / "fidelity", safe_serialization=True)
print(f"{run / 'fidelity'}: width {keep} -> {width}, {sum(p.numel() for p in new.parameters())} parameters, "
      "same outputs on a probe")

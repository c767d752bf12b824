"""The adaptor's rank objective (--rank-rate): a raised stated sigma must move the restoration the prompt's way.

    raised = raised_prompt("Denoise with sigma 0.10; Dejpeg with quality 40", rng)
                                        # RaisedPrompt("Denoise with sigma 0.16; Dejpeg with quality 40", sign=-1)
    penalty = rank_hinge(energy(restored_as_stated), energy(restored_as_raised), sign)   # per pair, >= 0

Why: every training pair states its degradation truthfully, so the model never sees a prompt that overstates
the noise, and nothing holds its response there. Longer legs let it drift: past the image's true sigma the output
got sharper again as the stated sigma rose (camera's sweep, bench/results/experiments/decoder_leg_j). The
sweep scores exactly that order, so this objective asks for it directly on the training pairs: raising the stated
noise sigma must smooth the restoration, raising the stated blur sigma must sharpen it, each by a margin. No
target image is needed for the raised prompt, only the order against the truthful one.

The energy is the sweep's own measure (evaluation.metrics.high_frequency_energy: the mean square of the luminance
minus its Gaussian blur), in torch so that it has a gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluation.metrics import LUMA_WEIGHTS
from ..prompts import CLAUSES, parse_restoration_prompt

# The clauses whose number orders the output's detail, and the sign of the energy change as the number rises
# (the sweeps of evaluation/sweep.py). Upsampling and JPEG quality have no such plain order on a given input.
ENERGY_SIGN = {"denoise": -1, "deblur": +1}
RAISE_FACTOR = (1.25, 2.0)  # the sweeps state up to twice the true sigma
RANK_MARGIN = 0.05  # in log energy: the raised prompt's output must differ by about 5% at least
_SPECS = {spec.field: spec for spec in CLAUSES}


@dataclass(frozen=True)
class RaisedPrompt:
    text: str
    sign: int  # +1: the output's high-frequency energy must rise against the truthful prompt's; -1: fall


def raised_prompt(prompt: str, rng: np.random.Generator) -> RaisedPrompt | None:
    """`prompt` with one of its noise or blur sigmas raised by a random factor in RAISE_FACTOR (held to the
    grammar's range); None when it states neither, or the number is already at the top of its range."""
    parsed = parse_restoration_prompt(prompt)
    fields = [field for field in ENERGY_SIGN if getattr(parsed, field) is not None]
    if not fields:
        return None
    field = fields[int(rng.integers(len(fields)))]
    spec, value = _SPECS[field], getattr(parsed, field)
    # At least one step of the clause's precision up, so a small sigma (0.01) is raised at all after rounding.
    raised = min(max(value * rng.uniform(*RAISE_FACTOR), value + 10.0 ** -spec.places), float(spec.hi))
    if raised <= value:
        return None
    return RaisedPrompt(str(replace(parsed, **{field: raised})), ENERGY_SIGN[field])


def high_frequency_energy(images: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Per image of [B, 3, H, W] in [0, 1]: the mean square of the luminance minus its Gaussian blur, as
    evaluation.metrics.high_frequency_energy computes it (edges reflected, the kernel cut at 4 sigma)."""
    luma = torch.einsum("bchw,c->bhw", images, images.new_tensor(LUMA_WEIGHTS))[:, None]
    radius = int(4 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    blurred = F.conv2d(symmetric_pad(luma, radius, dim=3), kernel.reshape(1, 1, 1, -1))
    blurred = F.conv2d(symmetric_pad(blurred, radius, dim=2), kernel.reshape(1, 1, -1, 1))
    return (luma - blurred).pow(2).mean(dim=(1, 2, 3))


def symmetric_pad(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """scipy.ndimage's mode "reflect" (d c b a | a b c d), which torch's pad modes lack (its "reflect" is
    scipy's "mirror")."""
    head, tail = x.narrow(dim, 0, width).flip(dim), x.narrow(dim, x.shape[dim] - width, width).flip(dim)
    return torch.cat([head, x, tail], dim=dim)


def rank_hinge(stated: torch.Tensor, raised: torch.Tensor, sign: torch.Tensor,
               margin: float = RANK_MARGIN) -> torch.Tensor:
    """Per pair: zero once log(raised) - log(stated) has moved `margin` in `sign`'s direction, else the shortfall.
    Energies [N] (the truthful restoration's detached by the caller: only the raised one is pushed)."""
    change = torch.log(raised + 1e-8) - torch.log(stated + 1e-8)
    return F.relu(margin - sign * change)

"""modulate against SPIRE's modulation in PyTorch: batch-1 modulation broadcast, per-image strength, layouts."""

from __future__ import annotations

import pytest
import torch

from spire_rt.kernels import modulate, modulate_ref
from spire_rt.models import modulate as model_modulate

from .bounds import DTYPES, assert_bounded, assert_layout, float64, make

# (feature shape, modulation batch, strength values)
CASES = [
    ((3, 7, 5, 6), 1, [0.7]),
    ((2, 5, 4, 4), 2, [0.3, 1.5]),
    ((1, 3, 1, 1), 1, [1.0]),
    ((3, 33, 3, 5), 3, [2.0]),
]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_matches_torch(case, dtype, channels_last, device):
    shape, mod_batch, strengths = CASES[case]
    generator = torch.Generator().manual_seed(case)
    feature = make(shape, dtype, device, channels_last, generator)
    modulation = make((mod_batch, 2 * shape[1], *shape[2:]), dtype, device, channels_last, generator)
    # as the modulated UNet passes it: one value per image or one for all, [B|1, 1, 1, 1], in the model's dtype
    strength = torch.tensor(strengths, dtype=dtype, device=device).reshape(-1, 1, 1, 1)
    out = modulate(feature, modulation, strength)
    same = modulate_ref(feature, modulation, strength)
    ref = modulate_ref(float64(feature), float64(modulation), float64(strength))
    assert_bounded(out, same, ref, f"modulate {shape}")
    assert_layout(out, channels_last)


def test_reference_is_the_models_modulation(device):
    feature = make((2, 4, 3, 5), torch.float32, device)
    modulation = make((1, 8, 3, 5), torch.float32, device)
    strength = torch.tensor([0.4], device=device).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(modulate_ref(feature, modulation, strength),
                               model_modulate(feature, modulation, strength))


def test_python_float_strength(device):
    feature = make((2, 4, 3, 5), torch.float32, device)
    modulation = make((2, 8, 3, 5), torch.float32, device)
    torch.testing.assert_close(modulate(feature, modulation, 0.5), modulate_ref(feature, modulation, 0.5),
                               atol=1e-6, rtol=1e-6)


def test_bad_shapes_are_errors(device):
    feature = make((2, 4, 3, 5), torch.float32, device)
    with pytest.raises(ValueError, match="modulation must be"):
        modulate(feature, make((2, 4, 3, 5), torch.float32, device), 1.0)
    with pytest.raises(ValueError, match="batch"):
        modulate(make((3, 4, 3, 5), torch.float32, device), make((2, 8, 3, 5), torch.float32, device), 1.0)
    with pytest.raises(ValueError, match="strength"):
        modulate(feature, make((2, 8, 3, 5), torch.float32, device), torch.ones(3, device=device))

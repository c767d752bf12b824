"""geglu against diffusers' GEGLU gate (a * exact GELU(g)) in PyTorch."""

from __future__ import annotations

import pytest
import torch

from spire_rt.kernels import geglu, geglu_ref

from .bounds import DTYPES, assert_bounded, float64, make

SHAPES = [(3, 5, 14), (7, 74), (2, 3, 4, 600), (1, 2)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_torch(shape, dtype, device):
    u = make(shape, dtype, device, generator=torch.Generator().manual_seed(len(shape)), scale=2.0)
    out = geglu(u)
    assert_bounded(out, geglu_ref(u), geglu_ref(float64(u)), f"geglu {shape}")


def test_matches_diffusers_module(device):
    from diffusers.models.activations import GEGLU

    module = GEGLU(6, 10).to(device)
    x = make((2, 5, 6), torch.float32, device)
    with torch.no_grad():
        torch.testing.assert_close(geglu(module.proj(x)), module(x), atol=1e-5, rtol=1e-5)


def test_odd_last_axis_is_an_error(device):
    with pytest.raises(ValueError, match="even"):
        geglu(make((2, 5), torch.float32, device))

"""groupnorm_silu against GroupNorm (+ shift) (+ SiLU) in PyTorch, both strategies, both layouts, three dtypes."""

from __future__ import annotations

import pytest
import torch

from spire_rt.kernels import groupnorm_silu, groupnorm_silu_ref

from .bounds import DTYPES, assert_bounded, assert_layout, float64, make

# (shape, groups, block_elements): odd group sizes, one group, one channel per group, several tiles and row
# chunks per group (small block_elements forces the split strategy to tile a small tensor).
CASES = [
    ((3, 12, 5, 7), 4, 4096),
    ((1, 6, 3, 3), 1, 4096),
    ((2, 10, 1, 9), 10, 4096),
    ((2, 20, 5, 13), 4, 64),
]
# every case through both strategies in every dtype; the many-tile case (slow under the interpreter) only through
# the split strategy, which is the one that tiles, in fp32 and bf16
PARAMS = [(case, strategy, dtype) for case in range(3) for strategy in ("single", "split") for dtype in DTYPES]
PARAMS += [(3, "split", torch.float32), (3, "split", torch.bfloat16)]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize(("case", "strategy", "dtype"), PARAMS, ids=str)
def test_matches_torch(case, strategy, dtype, channels_last, device):
    shape, groups, block_elements = CASES[case]
    generator = torch.Generator().manual_seed(case)
    x = make(shape, dtype, device, channels_last, generator, scale=2.0, offset=0.5)
    weight = make(shape[1:2], dtype, device, generator=generator)
    bias = make(shape[1:2], dtype, device, generator=generator)
    shift = make(shape[:2], dtype, device, generator=generator) if case % 2 else None
    silu = case != 2
    out = groupnorm_silu(x, weight, bias, groups, 1e-5, shift=shift, silu=silu, strategy=strategy,
                         block_elements=block_elements)
    same = groupnorm_silu_ref(x, weight, bias, groups, 1e-5, shift=shift, silu=silu)
    ref = groupnorm_silu_ref(float64(x), float64(weight), float64(bias), groups, 1e-5, shift=float64(shift),
                             silu=silu)
    assert_bounded(out, same, ref, f"groupnorm_silu {shape} G={groups} {strategy}")
    assert_layout(out, channels_last)


@pytest.mark.parametrize("strategy", ["single", "split"])
def test_large_mean_keeps_fp32_digits(strategy, device):
    """Mean 300, std 1: E[x^2] - E[x]^2 in fp32 would lose the variance; the kernel's centred sums do not."""
    x = make((2, 8, 9, 13), torch.float32, device, generator=torch.Generator().manual_seed(5), offset=300.0)
    out = groupnorm_silu(x, None, None, 2, 1e-5, silu=False, strategy=strategy, block_elements=64)
    ref = groupnorm_silu_ref(float64(x), None, None, 2, 1e-5, silu=False)
    assert (float64(out) - ref).abs().max().item() < 1e-3


def test_auto_strategy_and_affine_none(device):
    x = make((2, 8, 4, 4), torch.float32, device, generator=torch.Generator().manual_seed(6))
    out = groupnorm_silu(x, None, None, 4)
    torch.testing.assert_close(out, groupnorm_silu_ref(x, None, None, 4), atol=1e-5, rtol=1e-5)


def test_bad_input_is_an_error(device):
    x = make((2, 6, 3, 3), torch.float32, device)
    with pytest.raises(ValueError, match="groups"):
        groupnorm_silu(x, None, None, 4)
    with pytest.raises(ValueError, match="4-D"):
        groupnorm_silu(x[0], None, None, 3)
    with pytest.raises(ValueError, match="strategy"):
        groupnorm_silu(x, None, None, 3, strategy="fast")

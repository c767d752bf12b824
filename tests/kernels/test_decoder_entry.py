"""decoder_entry against modulate + cat + GroupNorm + SiLU in PyTorch: both outputs, both strategies, both layouts."""

from __future__ import annotations

import pytest
import torch

from spire_rt.kernels import decoder_entry, decoder_entry_ref

from .bounds import DTYPES, assert_bounded, assert_layout, float64, make

# (h shape, skip channels, groups, modulation batch or None, strengths, block_elements)
CASES = [
    ((3, 5, 5, 7), 7, 4, 1, [0.7], 4096),  # groups of 3 channels; group 1 straddles the h/skip boundary
    ((2, 6, 3, 4), 6, 1, 2, [0.3, 1.2], 4096),  # one group; per-image strength and modulation
    ((3, 3, 1, 5), 9, 12, None, [1.0], 4096),  # one channel per group; the skip is already modulated
    ((2, 12, 5, 13), 8, 4, 1, [0.9], 64),  # several tiles and row chunks per group, straddling group
]
# every case through both strategies in every dtype; the many-tile case (slow under the interpreter) only through
# the split strategy, which is the one that tiles, in fp32 and bf16
PARAMS = [(case, strategy, dtype) for case in range(3) for strategy in ("single", "split") for dtype in DTYPES]
PARAMS += [(3, "split", torch.float32), (3, "split", torch.bfloat16)]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize(("case", "strategy", "dtype"), PARAMS, ids=str)
def test_matches_torch(case, strategy, dtype, channels_last, device):
    h_shape, skip_channels, groups, mod_batch, strengths, block_elements = CASES[case]
    generator = torch.Generator().manual_seed(case)
    batch, h_channels, height, width = h_shape
    h = make(h_shape, dtype, device, channels_last, generator, scale=1.5)
    skip = make((batch, skip_channels, height, width), dtype, device, channels_last, generator, offset=0.3)
    modulation = None
    if mod_batch is not None:
        modulation = make((mod_batch, 2 * skip_channels, height, width), dtype, device, channels_last, generator,
                          scale=0.5)
    strength = torch.tensor(strengths, dtype=dtype, device=device).reshape(-1, 1, 1, 1)
    weight = make((h_channels + skip_channels,), dtype, device, generator=generator)
    bias = make((h_channels + skip_channels,), dtype, device, generator=generator)

    x, y = decoder_entry(h, skip, modulation, strength, weight, bias, groups, 1e-5, strategy=strategy,
                         block_elements=block_elements)
    x_same, y_same = decoder_entry_ref(h, skip, modulation, strength, weight, bias, groups, 1e-5)
    x_ref, y_ref = decoder_entry_ref(float64(h), float64(skip), float64(modulation), float64(strength),
                                     float64(weight), float64(bias), groups, 1e-5)
    assert_bounded(x, x_same, x_ref, f"decoder_entry x {h_shape}+{skip_channels} {strategy}")
    assert_bounded(y, y_same, y_ref, f"decoder_entry y {h_shape}+{skip_channels} G={groups} {strategy}")
    assert torch.equal(x[:, :h_channels].cpu(), h.cpu()), "h must be copied exactly"
    assert_layout(x, channels_last)
    assert_layout(y, channels_last)


def test_mixed_layouts_follow_h(device):
    """A skip or modulation in the other layout is converted, not misread."""
    generator = torch.Generator().manual_seed(9)
    h = make((2, 4, 3, 5), torch.float32, device, True, generator)
    skip = make((2, 4, 3, 5), torch.float32, device, False, generator)
    modulation = make((1, 8, 3, 5), torch.float32, device, False, generator)
    x, y = decoder_entry(h, skip, modulation, 0.8, None, None, 2)
    x_ref, y_ref = decoder_entry_ref(h, skip, modulation, 0.8, None, None, 2)
    torch.testing.assert_close(x, x_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    assert_layout(y, True)


def test_bad_shapes_are_errors(device):
    h = make((2, 4, 3, 5), torch.float32, device)
    with pytest.raises(ValueError, match="same"):
        decoder_entry(h, make((2, 4, 3, 4), torch.float32, device), None, 1.0, None, None, 2)
    with pytest.raises(ValueError, match="groups"):
        decoder_entry(h, make((2, 3, 3, 5), torch.float32, device), None, 1.0, None, None, 2)
    with pytest.raises(ValueError, match="modulation"):
        decoder_entry(h, h, make((2, 4, 3, 5), torch.float32, device), 1.0, None, None, 2)

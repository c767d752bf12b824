"""SPIRE's skip modulation (SPIRE.md "Modulation fusion") as one pass over the feature.

    out[b, c, s] = (1 + st[b] * gamma[b', c, s]) * f[b, c, s] + st[b] * beta[b', c, s]
    gamma = modulation[:, :C], beta = modulation[:, C:]    (the adaptor's head output, read in place, not split)
    b' = b, or 0 when the adaptor ran at batch 1 for both guidance branches (broadcast, no repeat)
    st = the adaptor strength, one value or one per image

Arithmetic in fp32, one rounding at the store. Reads f, gamma, beta once and writes out once: 4 tensors' bytes,
against eager PyTorch's chunk + 4 elementwise kernels (about 10).
"""

from __future__ import annotations

import torch

from ._common import (
    check_launchable,
    is_channels_last,
    memory_format,
    tile_offsets,
    tile_shape,
    tl,
    to_layout,
    triton,
)


def modulate_ref(feature: torch.Tensor, modulation: torch.Tensor, strength) -> torch.Tensor:
    """`(1 + s*gamma) * f + s*beta` with `modulation = concat(gamma, beta)` (as models.modulated_unet.modulate)."""
    gamma, beta = modulation.chunk(2, dim=1)
    return (1 + strength * gamma) * feature + strength * beta


@triton.jit
def _modulate_kernel(
    f_ptr,
    m_ptr,
    st_ptr,
    out_ptr,
    C,
    HW,
    mod_batched,
    st_batched,
    CHANNELS_LAST: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_s = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2)
    s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (s < HW)[:, None] & (c < C)[None, :]
    offsets = tile_offsets(b * C * HW, s, c, C, HW, CHANNELS_LAST)
    f = tl.load(f_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    m_base = b * mod_batched * 2 * C * HW
    gamma = tl.load(m_ptr + tile_offsets(m_base, s, c, 2 * C, HW, CHANNELS_LAST), mask=mask, other=0.0)
    beta = tl.load(m_ptr + tile_offsets(m_base, s, c + C, 2 * C, HW, CHANNELS_LAST), mask=mask, other=0.0)
    st = tl.load(st_ptr + b * st_batched).to(tl.float32)
    out = (1.0 + st * gamma.to(tl.float32)) * f + st * beta.to(tl.float32)
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)


def modulate(feature: torch.Tensor, modulation: torch.Tensor, strength) -> torch.Tensor:
    """`modulate_ref` in one launch; the output keeps the feature's layout (NCHW or channels-last)."""
    if feature.dim() != 4:
        raise ValueError(f"expected a 4-D [B, C, H, W] feature, got shape {tuple(feature.shape)}")
    batch, channels, height, width = feature.shape
    mod_batched = check_modulation(modulation, batch, channels, height, width)
    check_launchable(feature, modulation)
    channels_last = is_channels_last(feature)
    feature = to_layout(feature, channels_last)
    modulation = to_layout(modulation, channels_last)
    strength, st_batched = strength_tensor(strength, batch, feature.device)
    out = torch.empty_like(feature, memory_format=memory_format(channels_last))
    spatial = height * width
    block_s, block_c = tile_shape(channels, spatial, channels_last)
    grid = (triton.cdiv(spatial, block_s), triton.cdiv(channels, block_c), batch)
    _modulate_kernel[grid](
        feature, modulation, strength, out, channels, spatial, mod_batched, st_batched,
        CHANNELS_LAST=channels_last, BLOCK_S=block_s, BLOCK_C=block_c, num_warps=4)
    return out


def check_modulation(modulation: torch.Tensor, batch: int, channels: int, height: int, width: int) -> int:
    """1 when the modulation has the feature's batch, 0 when its single image serves the whole batch."""
    if modulation.dim() != 4 or tuple(modulation.shape[1:]) != (2 * channels, height, width):
        raise ValueError(f"modulation must be [B or 1, {2 * channels}, {height}, {width}], "
                         f"got {tuple(modulation.shape)}")
    if modulation.shape[0] not in (1, batch):
        raise ValueError(f"modulation batch {modulation.shape[0]} is neither 1 nor the feature's {batch}")
    return int(modulation.shape[0] == batch and batch > 1)


def strength_tensor(strength, batch: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """The adaptor strength as a flat device tensor (no host sync) and whether it has one value per image."""
    if not isinstance(strength, torch.Tensor):
        strength = torch.tensor([float(strength)], dtype=torch.float32)
    strength = strength.reshape(-1).to(device).contiguous()
    if strength.numel() not in (1, batch):
        raise ValueError(f"strength has {strength.numel()} values for a batch of {batch}")
    return strength, int(strength.numel() == batch and batch > 1)

"""The entry of every resnet on SPIRE's up path: modulate the skip, concatenate, GroupNorm, SiLU; one pass.

    f'     = (1 + st[b] * gamma) * f + st[b] * beta            the adaptor's modulation of the skip (modulate.py)
    x      = concat(h, f') along channels                      [B, Ch + Cs, H, W]: the resnet's shortcut needs it
    y      = SiLU(GroupNorm_G(x) * weight + bias)              the resnet's norm1 + nonlinearity; fp32 statistics

Eager PyTorch does this as chunk + 4 elementwise kernels (the modulation), a cat, a group norm and a SiLU, reading
the skip three times and writing four intermediates. Here the skip, gamma, beta and h are read once and x and y
written once. Groups may straddle the h/f' boundary (1280 + 640 channels in 32 groups of 60, say); each channel
is read from its own source. Strategies as in groupnorm_silu.py:
- single: one program per (image, group) computes x, writes it, takes exact two-pass statistics, writes y.
- split: `_entry_partial_kernel` writes x and the per-channel partial (mean, M2) of its tile; groupnorm_silu's
  finalize and apply kernels finish (the apply reads x back, mostly from L2 at SD sizes).
`modulation=None` skips the modulation (the skip is already modulated).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import (
    check_launchable,
    fsum,
    is_channels_last,
    memory_format,
    pow2,
    silu,
    tile_offsets,
    tl,
    to_layout,
    triton,
)
from .groupnorm_silu import SINGLE_MAX_ELEMENTS, _affine, apply_groupnorm, finalize_statistics, partial_tiling
from .modulate import check_modulation, modulate_ref, strength_tensor


def decoder_entry_ref(
    h: torch.Tensor,
    skip: torch.Tensor,
    modulation: torch.Tensor | None,
    strength,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    num_groups: int,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The PyTorch sequence the kernel replaces: (x, y)."""
    if modulation is not None:
        skip = modulate_ref(skip, modulation, strength)
    x = torch.cat([h, skip], dim=1)
    return x, F.silu(F.group_norm(x, num_groups, weight, bias, eps))


@triton.jit
def _entry_tile(
    h_ptr,
    f_ptr,
    m_ptr,
    st_ptr,
    b,
    s,
    c,
    mask,
    CH,
    CS,
    HW,
    mod_batched,
    st_batched,
    MODULATE: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
):
    """x at spatial rows s x concatenated channels c, in fp32 (masked-off entries are 0)."""
    in_h = (c < CH)[None, :]
    cf = c - CH
    xh = tl.load(h_ptr + tile_offsets(b * CH * HW, s, c, CH, HW, CHANNELS_LAST), mask=mask & in_h, other=0.0)
    from_f = mask & (c >= CH)[None, :]
    xf = tl.load(f_ptr + tile_offsets(b * CS * HW, s, cf, CS, HW, CHANNELS_LAST), mask=from_f, other=0.0)
    xf = xf.to(tl.float32)
    if MODULATE:
        m_base = b * mod_batched * 2 * CS * HW
        gamma = tl.load(m_ptr + tile_offsets(m_base, s, cf, 2 * CS, HW, CHANNELS_LAST), mask=from_f, other=0.0)
        beta = tl.load(m_ptr + tile_offsets(m_base, s, cf + CS, 2 * CS, HW, CHANNELS_LAST), mask=from_f,
                       other=0.0)
        st = tl.load(st_ptr + b * st_batched).to(tl.float32)
        xf = (1.0 + st * gamma.to(tl.float32)) * xf + st * beta.to(tl.float32)
    return tl.where(in_h, xh.to(tl.float32), xf)


@triton.jit
def _entry_partial_kernel(
    h_ptr,
    f_ptr,
    m_ptr,
    st_ptr,
    x_ptr,
    mean_p_ptr,
    m2_p_ptr,
    CH,
    CS,
    HW,
    ROWS,
    mod_batched,
    st_batched,
    MODULATE: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ITERS: tl.constexpr,
):
    pid_s = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2)
    C = CH + CS
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    row0 = pid_s * ROWS
    pivot = tl.full([BLOCK_C], 0.0, tl.float32)
    s1 = tl.full([BLOCK_C], 0.0, tl.float32)
    s2 = tl.full([BLOCK_C], 0.0, tl.float32)
    for i in tl.static_range(ITERS):
        s = row0 + i * BLOCK_S + tl.arange(0, BLOCK_S)
        mask = (s < HW)[:, None] & c_mask[None, :]
        x = _entry_tile(h_ptr, f_ptr, m_ptr, st_ptr, b, s, c, mask, CH, CS, HW, mod_batched, st_batched,
                        MODULATE, CHANNELS_LAST)
        tl.store(x_ptr + tile_offsets(b * C * HW, s, c, C, HW, CHANNELS_LAST), x.to(x_ptr.dtype.element_ty),
                 mask=mask)
        if i == 0:
            pivot = fsum(tl.where((s == row0)[:, None], x, 0.0), 0)
        d = tl.where(mask, x - pivot[None, :], 0.0)
        s1 += fsum(d, 0)
        s2 += fsum(d * d, 0)
    n = tl.minimum(HW - row0, ROWS).to(tl.float32)
    out = (b * tl.num_programs(0) + pid_s) * C + c
    tl.store(mean_p_ptr + out, pivot + s1 / n, mask=c_mask)
    tl.store(m2_p_ptr + out, tl.maximum(s2 - s1 * s1 / n, 0.0), mask=c_mask)


@triton.jit
def _entry_single_kernel(
    h_ptr,
    f_ptr,
    m_ptr,
    st_ptr,
    w_ptr,
    b_ptr,
    x_ptr,
    y_ptr,
    CH,
    CS,
    HW,
    CG,
    eps,
    mod_batched,
    st_batched,
    MODULATE: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    g = tl.program_id(0)
    b = tl.program_id(1)
    C = CH + CS
    s = tl.arange(0, BLOCK_S)
    k = tl.arange(0, BLOCK_G)
    c = g * CG + k
    k_mask = k < CG
    mask = (s < HW)[:, None] & k_mask[None, :]
    x = _entry_tile(h_ptr, f_ptr, m_ptr, st_ptr, b, s, c, mask, CH, CS, HW, mod_batched, st_batched,
                    MODULATE, CHANNELS_LAST)
    offsets = tile_offsets(b * C * HW, s, c, C, HW, CHANNELS_LAST)
    tl.store(x_ptr + offsets, x.to(x_ptr.dtype.element_ty), mask=mask)
    count = CG * HW * 1.0
    mean = fsum(fsum(x, 1), 0) / count
    d = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(fsum(fsum(d * d, 1), 0) / count + eps)
    w = tl.load(w_ptr + c, mask=k_mask, other=0.0).to(tl.float32)
    bias = tl.load(b_ptr + c, mask=k_mask, other=0.0).to(tl.float32)
    y = d * (rstd * w)[None, :] + bias[None, :]
    y = silu(y)
    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


def decoder_entry(
    h: torch.Tensor,
    skip: torch.Tensor,
    modulation: torch.Tensor | None,
    strength,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    num_groups: int,
    eps: float = 1e-5,
    *,
    strategy: str = "auto",
    block_elements: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`decoder_entry_ref` fused; x and y take h's layout (NCHW or channels-last) and dtype.

    `strategy` forces "single" or "split"; `block_elements` sets the split strategy's tile size (tuning, tests).
    """
    if h.dim() != 4 or skip.dim() != 4 or h.shape[0] != skip.shape[0] or h.shape[2:] != skip.shape[2:]:
        raise ValueError(f"h {tuple(h.shape)} and skip {tuple(skip.shape)} must be [B, C, H, W] with the same "
                         "B, H, W")
    batch, h_channels, height, width = h.shape
    s_channels = skip.shape[1]
    channels = h_channels + s_channels
    if num_groups < 1 or channels % num_groups:
        raise ValueError(f"{channels} channels do not split into {num_groups} groups")
    modulated = modulation is not None
    mod_batched = check_modulation(modulation, batch, s_channels, height, width) if modulated else 0
    check_launchable(h, skip)
    channels_last = is_channels_last(h)
    h, skip = to_layout(h, channels_last), to_layout(skip.to(h.dtype), channels_last)
    modulation = to_layout(modulation, channels_last) if modulated else skip
    # without a modulation nothing reads the strength: no tensor made (a host copy would break graph capture)
    strength, st_batched = strength_tensor(strength, batch, h.device) if modulated else (skip, 0)
    weight, bias = _affine(weight, bias, channels, h)
    fmt = memory_format(channels_last)
    x = torch.empty((batch, channels, height, width), device=h.device, dtype=h.dtype, memory_format=fmt)
    y = torch.empty_like(x, memory_format=fmt)
    spatial = height * width
    group_channels = channels // num_groups
    if strategy == "auto":
        strategy = "single" if pow2(spatial) * pow2(group_channels) <= SINGLE_MAX_ELEMENTS else "split"
    if strategy == "single":
        tile = pow2(spatial) * pow2(group_channels)
        _entry_single_kernel[(num_groups, batch)](
            h, skip, modulation, strength, weight, bias, x, y, h_channels, s_channels, spatial,
            group_channels, eps, mod_batched, st_batched,
            MODULATE=modulated, CHANNELS_LAST=channels_last, BLOCK_S=pow2(spatial),
            BLOCK_G=pow2(group_channels), num_warps=8 if tile > 2048 else 4)
        return x, y
    if strategy != "split":
        raise ValueError(f"strategy must be auto, single or split, got {strategy!r}")
    block_s, block_c, iters, rows = partial_tiling(channels, spatial, channels_last, block_elements)
    tiles = triton.cdiv(spatial, rows)
    mean_p = torch.empty(batch, tiles, channels, device=h.device, dtype=torch.float32)
    m2_p = torch.empty_like(mean_p)
    _entry_partial_kernel[(tiles, triton.cdiv(channels, block_c), batch)](
        h, skip, modulation, strength, x, mean_p, m2_p, h_channels, s_channels, spatial, rows,
        mod_batched, st_batched,
        MODULATE=modulated, CHANNELS_LAST=channels_last, BLOCK_S=block_s, BLOCK_C=block_c, ITERS=iters,
        num_warps=8)
    mean, rstd = finalize_statistics(mean_p, m2_p, spatial, rows, num_groups, eps)
    apply_groupnorm(x, mean, rstd, weight, bias, y, None, True, channels_last, block_elements)
    return x, y

"""GroupNorm followed by SiLU (or by nothing), statistics in fp32, for NCHW or channels-last activations.

    u[b, c, s]  = x[b, c, s] + t[b, c]                     t: optional per-(image, channel) shift, e.g. a resnet's
                                                           projected time embedding (norm2(h + temb) needs no sum
                                                           written out); t = 0 when absent
    mean[b, g], var[b, g] = moments of u over group g's (C / G) channels x H x W positions   (biased variance)
    y[b, c, s]  = act((u - mean[b, g]) / sqrt(var[b, g] + eps) * weight[c] + bias[c]),   g = c // (C / G)
    act         = SiLU(v) = v * sigmoid(v), or the identity

Two strategies, picked by group size:
- single: a group that fits one program's registers is read once by one program per (image, group), which takes the
  exact two-pass mean and variance and writes y. One launch; what the UNet's 8x8 and 16x16 levels need.
- split: (1) `_gn_partial_kernel` tiles [BLOCK_S positions x BLOCK_C channels] and writes each channel's (mean, M2)
  over its rows, summing deviations from the chunk's first row so fp32 keeps the digits; (2) `_gn_finalize_kernel`,
  one program per (image, group), merges them with the parallel-variance formula (Chan, Golub, LeVeque 1979):
  mean = sum(n_i mean_i) / N,  M2 = sum(M2_i + n_i (mean_i - mean)^2); (3) `_gn_apply_kernel` tiles normalise,
  scale, shift and activate. x is read twice; at SD sizes the second read mostly hits L2.
The fused decoder entry (decoder_entry.py) reuses (2) and (3).
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
    tile_shape,
    tl,
    to_layout,
    triton,
)

SINGLE_MAX_ELEMENTS = 8192  # a group up to this many (padded) values is normalised by one program


def groupnorm_silu_ref(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    num_groups: int,
    eps: float = 1e-5,
    *,
    shift: torch.Tensor | None = None,
    silu: bool = True,
) -> torch.Tensor:
    """The PyTorch sequence the kernel replaces."""
    if shift is not None:
        x = x + shift.reshape(x.shape[0], x.shape[1], *([1] * (x.dim() - 2))).to(x.dtype)
    y = F.group_norm(x, num_groups, weight, bias, eps)
    return F.silu(y) if silu else y


@triton.jit
def _gn_partial_kernel(
    x_ptr,
    shift_ptr,
    mean_p_ptr,
    m2_p_ptr,
    C,
    HW,
    ROWS,
    HAS_SHIFT: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ITERS: tl.constexpr,
):
    pid_s = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    row0 = pid_s * ROWS
    if HAS_SHIFT:
        t = tl.load(shift_ptr + b * C + c, mask=c_mask, other=0.0).to(tl.float32)
    pivot = tl.full([BLOCK_C], 0.0, tl.float32)
    s1 = tl.full([BLOCK_C], 0.0, tl.float32)
    s2 = tl.full([BLOCK_C], 0.0, tl.float32)
    for i in tl.static_range(ITERS):
        s = row0 + i * BLOCK_S + tl.arange(0, BLOCK_S)
        mask = (s < HW)[:, None] & c_mask[None, :]
        x = tl.load(x_ptr + tile_offsets(b * C * HW, s, c, C, HW, CHANNELS_LAST), mask=mask, other=0.0)
        x = x.to(tl.float32)
        if HAS_SHIFT:
            x = x + t[None, :]
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
def _gn_finalize_kernel(
    mean_p_ptr,
    m2_p_ptr,
    mean_ptr,
    rstd_ptr,
    C,
    HW,
    T,
    ROWS,
    CG,
    eps,
    BLOCK_T: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    g = tl.program_id(0)
    b = tl.program_id(1)
    base = b * T * C + g * CG
    count = CG * HW * 1.0
    acc = tl.full([BLOCK_T, BLOCK_G], 0.0, tl.float32)
    for t0 in range(0, T, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        n_t = tl.minimum(HW - t * ROWS, ROWS).to(tl.float32)
        for k0 in range(0, CG, BLOCK_G):
            k = k0 + tl.arange(0, BLOCK_G)
            mask = (t < T)[:, None] & (k < CG)[None, :]
            mu = tl.load(mean_p_ptr + base + t[:, None] * C + k[None, :], mask=mask, other=0.0)
            acc += tl.where(mask, mu * n_t[:, None], 0.0)
    mean = fsum(fsum(acc, 1), 0) / count
    acc = tl.full([BLOCK_T, BLOCK_G], 0.0, tl.float32)
    for t0 in range(0, T, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        n_t = tl.minimum(HW - t * ROWS, ROWS).to(tl.float32)
        for k0 in range(0, CG, BLOCK_G):
            k = k0 + tl.arange(0, BLOCK_G)
            mask = (t < T)[:, None] & (k < CG)[None, :]
            mu = tl.load(mean_p_ptr + base + t[:, None] * C + k[None, :], mask=mask, other=0.0)
            m2 = tl.load(m2_p_ptr + base + t[:, None] * C + k[None, :], mask=mask, other=0.0)
            d = mu - mean
            acc += tl.where(mask, m2 + n_t[:, None] * d * d, 0.0)
    var = fsum(fsum(acc, 1), 0) / count
    tl.store(mean_ptr + b * tl.num_programs(0) + g, mean)
    tl.store(rstd_ptr + b * tl.num_programs(0) + g, 1.0 / tl.sqrt(var + eps))


@triton.jit
def _gn_apply_kernel(
    x_ptr,
    shift_ptr,
    mean_ptr,
    rstd_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    C,
    HW,
    CG,
    G,
    HAS_SHIFT: tl.constexpr,
    SILU: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_s = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2)
    s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    mask = (s < HW)[:, None] & c_mask[None, :]
    offsets = tile_offsets(b * C * HW, s, c, C, HW, CHANNELS_LAST)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    g = c // CG
    mean = tl.load(mean_ptr + b * G + g, mask=c_mask, other=0.0)
    rstd = tl.load(rstd_ptr + b * G + g, mask=c_mask, other=0.0)
    w = tl.load(w_ptr + c, mask=c_mask, other=0.0).to(tl.float32)
    scale = rstd * w
    offset = tl.load(b_ptr + c, mask=c_mask, other=0.0).to(tl.float32) - mean * scale
    if HAS_SHIFT:
        offset += tl.load(shift_ptr + b * C + c, mask=c_mask, other=0.0).to(tl.float32) * scale
    y = x * scale[None, :] + offset[None, :]
    if SILU:
        y = silu(y)
    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gn_single_kernel(
    x_ptr,
    shift_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    C,
    HW,
    CG,
    eps,
    HAS_SHIFT: tl.constexpr,
    SILU: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    g = tl.program_id(0)
    b = tl.program_id(1)
    s = tl.arange(0, BLOCK_S)
    k = tl.arange(0, BLOCK_G)
    c = g * CG + k
    k_mask = k < CG
    mask = (s < HW)[:, None] & k_mask[None, :]
    offsets = tile_offsets(b * C * HW, s, c, C, HW, CHANNELS_LAST)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if HAS_SHIFT:
        x = x + tl.load(shift_ptr + b * C + c, mask=k_mask, other=0.0).to(tl.float32)[None, :]
    count = CG * HW * 1.0
    mean = fsum(fsum(tl.where(mask, x, 0.0), 1), 0) / count
    d = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(fsum(fsum(d * d, 1), 0) / count + eps)
    w = tl.load(w_ptr + c, mask=k_mask, other=0.0).to(tl.float32)
    bias = tl.load(b_ptr + c, mask=k_mask, other=0.0).to(tl.float32)
    y = d * (rstd * w)[None, :] + bias[None, :]
    if SILU:
        y = silu(y)
    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


def groupnorm_silu(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    num_groups: int,
    eps: float = 1e-5,
    *,
    shift: torch.Tensor | None = None,
    silu: bool = True,
    strategy: str = "auto",
    block_elements: int = 4096,
) -> torch.Tensor:
    """`groupnorm_silu_ref` in one (small groups) or three (large groups) launches; y keeps x's layout.

    `strategy` forces "single" or "split"; `block_elements` sets the split strategy's tile size (tuning, tests).
    """
    batch, channels, spatial, channels_last, x = _check_input(x, num_groups)
    check_launchable(x)
    weight, bias = _affine(weight, bias, channels, x)
    group_channels = channels // num_groups
    has_shift = shift is not None
    shift = shift.reshape(batch, channels).contiguous() if has_shift else x
    y = torch.empty_like(x, memory_format=memory_format(channels_last))
    if _strategy(strategy, spatial, group_channels) == "single":
        tile = pow2(spatial) * pow2(group_channels)
        _gn_single_kernel[(num_groups, batch)](
            x, shift, weight, bias, y, channels, spatial, group_channels, eps,
            HAS_SHIFT=has_shift, SILU=silu, CHANNELS_LAST=channels_last,
            BLOCK_S=pow2(spatial), BLOCK_G=pow2(group_channels), num_warps=8 if tile > 2048 else 4)
        return y
    shift = shift if has_shift else None
    mean, rstd = group_statistics(x, num_groups, eps, shift, channels_last, block_elements)
    apply_groupnorm(x, mean, rstd, weight, bias, y, shift, silu, channels_last, block_elements)
    return y


def partial_tiling(channels, spatial, channels_last, block_elements):
    """(BLOCK_S, BLOCK_C, ITERS, rows per program): at least 64 rows per program, so the partials stay small."""
    block_s, block_c = tile_shape(channels, spatial, channels_last, block_elements)
    iters = max(1, min(triton.cdiv(64, block_s), triton.cdiv(spatial, block_s)))
    return block_s, block_c, iters, block_s * iters


def group_statistics(x, num_groups, eps, shift, channels_last, block_elements=4096):
    """Split strategy, steps (1) and (2): fp32 mean and 1/std per (image, group)."""
    batch, channels = x.shape[:2]
    spatial = x.shape[2] * x.shape[3]
    block_s, block_c, iters, rows = partial_tiling(channels, spatial, channels_last, block_elements)
    tiles = triton.cdiv(spatial, rows)
    mean_p = torch.empty(batch, tiles, channels, device=x.device, dtype=torch.float32)
    m2_p = torch.empty_like(mean_p)
    _gn_partial_kernel[(tiles, triton.cdiv(channels, block_c), batch)](
        x, shift if shift is not None else x, mean_p, m2_p, channels, spatial, rows,
        HAS_SHIFT=shift is not None, CHANNELS_LAST=channels_last, BLOCK_S=block_s, BLOCK_C=block_c,
        ITERS=iters, num_warps=8)
    return finalize_statistics(mean_p, m2_p, spatial, rows, num_groups, eps)


def finalize_statistics(mean_p, m2_p, spatial, rows, num_groups, eps):
    batch, tiles, channels = mean_p.shape
    group_channels = channels // num_groups
    mean = torch.empty(batch, num_groups, device=mean_p.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    block_g = min(pow2(group_channels), 256)
    block_t = max(1, min(pow2(tiles), 2048 // block_g))
    _gn_finalize_kernel[(num_groups, batch)](
        mean_p, m2_p, mean, rstd, channels, spatial, tiles, rows, group_channels, eps,
        BLOCK_T=block_t, BLOCK_G=block_g, num_warps=4)
    return mean, rstd


def apply_groupnorm(x, mean, rstd, weight, bias, y, shift, silu, channels_last, block_elements=4096):
    """Split strategy, step (3): y = act((x + t - mean) * rstd * weight + bias)."""
    batch, channels = x.shape[:2]
    spatial = x.shape[2] * x.shape[3]
    num_groups = mean.shape[1]
    block_s, block_c = tile_shape(channels, spatial, channels_last, block_elements)
    grid = (triton.cdiv(spatial, block_s), triton.cdiv(channels, block_c), batch)
    _gn_apply_kernel[grid](
        x, shift if shift is not None else x, mean, rstd, weight, bias, y, channels, spatial,
        channels // num_groups, num_groups,
        HAS_SHIFT=shift is not None, SILU=silu, CHANNELS_LAST=channels_last,
        BLOCK_S=block_s, BLOCK_C=block_c, num_warps=8)


def _check_input(x, num_groups):
    if x.dim() != 4:
        raise ValueError(f"expected a 4-D [B, C, H, W] tensor, got shape {tuple(x.shape)}")
    batch, channels, height, width = x.shape
    if num_groups < 1 or channels % num_groups:
        raise ValueError(f"{channels} channels do not split into {num_groups} groups")
    channels_last = is_channels_last(x)
    return batch, channels, height * width, channels_last, to_layout(x, channels_last)


def _affine(weight, bias, channels, like):
    weight = torch.ones(channels, device=like.device, dtype=like.dtype) if weight is None else weight.contiguous()
    bias = torch.zeros(channels, device=like.device, dtype=like.dtype) if bias is None else bias.contiguous()
    if weight.numel() != channels or bias.numel() != channels:
        raise ValueError(f"weight/bias must have {channels} elements, got {weight.numel()}/{bias.numel()}")
    return weight, bias


def _strategy(strategy, spatial, group_channels):
    if strategy == "auto":
        return "single" if pow2(spatial) * pow2(group_channels) <= SINGLE_MAX_ELEMENTS else "split"
    if strategy not in ("single", "split"):
        raise ValueError(f"strategy must be auto, single or split, got {strategy!r}")
    return strategy

"""GEGLU, the gate of the transformer feed-forward (Shazeer 2020, "GLU Variants Improve Transformer"), one pass.

    u = proj(x) = [a, g]  (last axis, 2D)      y = a * GELU(g),   GELU(g) = g/2 * (1 + erf(g / sqrt(2)))  (exact)

Reads u once (2D values per row) and writes y (D values); eager PyTorch reads g, writes GELU(g), then reads a and
GELU(g) and writes y: 5D per row against 3D. The projection itself stays with cuBLAS.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import check_launchable, pow2, tl, triton


def geglu_ref(u: torch.Tensor) -> torch.Tensor:
    """diffusers' `GEGLU.forward` after its projection."""
    a, gate = u.chunk(2, dim=-1)
    return a * F.gelu(gate)


@triton.jit
def _geglu_kernel(
    u_ptr,
    y_ptr,
    M,
    D,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = (rows < M)[:, None] & (cols < D)[None, :]
    u_offsets = rows[:, None] * (2 * D) + cols[None, :]
    a = tl.load(u_ptr + u_offsets, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(u_ptr + u_offsets + D, mask=mask, other=0.0).to(tl.float32)
    y = a * (0.5 * g * (1.0 + tl.math.erf(g * 0.7071067811865476)))
    tl.store(y_ptr + rows[:, None] * D + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


def geglu(u: torch.Tensor) -> torch.Tensor:
    """`geglu_ref` in one launch; u's last axis holds [a, g]."""
    if u.shape[-1] % 2:
        raise ValueError(f"the last axis must hold [a, gate]: even length, got {u.shape[-1]}")
    check_launchable(u)
    u = u.contiguous()
    dim = u.shape[-1] // 2
    rows = u.numel() // max(1, u.shape[-1])
    y = torch.empty(*u.shape[:-1], dim, device=u.device, dtype=u.dtype)
    if y.numel() == 0:
        return y
    block_d = min(pow2(dim), 256)
    block_m = max(1, min(pow2(rows), 4096 // block_d))
    _geglu_kernel[(triton.cdiv(rows, block_m), triton.cdiv(dim, block_d))](
        u, y, rows, dim, BLOCK_M=block_m, BLOCK_D=block_d, num_warps=4)
    return y

"""What the kernel files share: the optional Triton import, the interpreter check and the layout helpers.

Every kernel works on 4-D activations that are contiguous either as NCHW or as channels-last (NHWC); the
kernels compute addresses from the shape and a compile-time CHANNELS_LAST flag, so the launchers bring every
input to the output's layout first (a no-op on the fast path, where everything is channels-last).
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the references still import and run without Triton
    triton = None
    tl = None

HAVE_TRITON = triton is not None
# Triton reads TRITON_INTERPRET when a @triton.jit function is defined, i.e. when the kernel files are imported.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

if triton is None:

    class _NoTriton:
        """Stands in for `triton` and `tl` so the kernel files still define their functions (never launched)."""

        constexpr = object

        @staticmethod
        def jit(fn=None, **_):
            return fn if fn is not None else (lambda f: f)

    triton = tl = _NoTriton()


def triton_available(device: str | torch.device | None = None) -> bool:
    """Whether the Triton kernels can run here: on a CUDA device, or on the CPU under TRITON_INTERPRET=1."""
    if not HAVE_TRITON:
        return False
    if device is not None and torch.device(device).type == "cpu":
        return INTERPRET
    return INTERPRET or torch.cuda.is_available()


def check_launchable(*tensors: torch.Tensor) -> None:
    if not HAVE_TRITON:
        raise RuntimeError("the Triton kernels need triton (pip install 'spire-rt[gpu]'); use the *_ref functions")
    for tensor in tensors:
        if tensor.device.type == "cpu" and not INTERPRET:
            raise RuntimeError("a Triton kernel got a CPU tensor: set TRITON_INTERPRET=1 before spire_rt.kernels "
                               "is imported to run the kernels on the CPU, or use the *_ref functions")
        if tensor.device.type not in ("cpu", "cuda"):
            raise RuntimeError(f"the Triton kernels run on CUDA (or the CPU interpreter), not {tensor.device}")
        if tensor.numel() >= 2**31:
            raise ValueError(f"tensor of {tensor.numel()} elements: the kernels index with 32-bit offsets")


def is_channels_last(tensor: torch.Tensor) -> bool:
    """Stored as NHWC (and not also as NCHW, which happens when C or H*W is 1: then NCHW is used)."""
    return (tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last)
            and not tensor.is_contiguous())


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def to_layout(tensor: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """The tensor contiguous in the given layout (itself when it already is)."""
    fmt = memory_format(channels_last)
    return tensor if tensor.is_contiguous(memory_format=fmt) else tensor.contiguous(memory_format=fmt)


def pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def tile_shape(channels: int, spatial: int, channels_last: bool, elements: int = 4096) -> tuple[int, int]:
    """(BLOCK_S, BLOCK_C) of a tile of about `elements` values.

    Channels-last tiles run along the contiguous channel axis, as wide as divides C evenly (no idle lanes at SD's
    320/640/1280 channels); NCHW tiles run along the contiguous spatial axis with few channels each.
    """
    cap = max(4, min(128 if channels_last else 32, elements // 4))
    cap = 1 << (cap.bit_length() - 1)
    block_c = min(pow2(channels), cap)
    if channels_last:
        block_c = next((b for b in (cap, cap // 2, cap // 4) if b >= 4 and channels % b == 0), block_c)
    block_s = max(1, min(pow2(spatial), elements // block_c))
    return block_s, block_c


@triton.jit
def tile_offsets(
    batch_offset,
    s,
    c,
    C,
    HW,
    CHANNELS_LAST: tl.constexpr,
):
    """Element offsets of the tile at spatial rows `s` x channels `c` of one image with C channels."""
    if CHANNELS_LAST:
        return batch_offset + s[:, None] * C + c[None, :]
    else:
        return batch_offset + c[None, :] * HW + s[:, None]


# The kernels use triton.language builtins only. triton.language.standard's helpers (tl.sum, tl.zeros, tl.sigmoid)
# are themselves @triton.jit functions, made when Triton is first imported; torch imports Triton, usually before
# TRITON_INTERPRET is set, and the CPU interpreter then refuses to call them.


@triton.jit
def _add(a, b):
    return a + b


# tl.sum's own combine function when there is one: the interpreter recognises it and sums with numpy, where any
# other combine function is called element by element.
_sum_combine = getattr(getattr(tl, "standard", None), "_sum_combine", None) or _add


@triton.jit
def fsum(
    x,
    AXIS: tl.constexpr,
):
    """tl.sum(x, axis=AXIS)."""
    return tl.reduce(x, AXIS, _sum_combine)


@triton.jit
def silu(y):
    """y * sigmoid(y)."""
    return y / (1.0 + tl.exp(-y))

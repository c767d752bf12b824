"""The kernels' accuracy bound (STYLE.md): err(kernel) <= 2 * err(PyTorch in the same dtype) + atol.

Errors are max |out - ref| against a float64 reference computed from the very same (already rounded) inputs, so
input rounding counts for neither side. atol is one unit in the last place at the output's scale: Triton's CPU
interpreter truncates fp32 -> bf16 stores where the GPU rounds to nearest, which costs up to one bf16 ulp.
"""

from __future__ import annotations

import torch

ULP = {torch.float32: 1e-5, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def make(shape, dtype, device, channels_last=False, generator=None, scale=1.0, offset=0.0):
    """Random data (never zeros: they hide unwritten outputs), rounded to dtype, optionally channels-last."""
    tensor = (torch.randn(shape, generator=generator) * scale + offset).to(dtype).to(device)
    if channels_last and tensor.dim() == 4:
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    return tensor


def float64(tensor):
    return tensor.detach().to("cpu", torch.float64) if isinstance(tensor, torch.Tensor) else tensor


def assert_bounded(out: torch.Tensor, same_dtype: torch.Tensor, ref: torch.Tensor, what: str = "") -> None:
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert out.dtype == same_dtype.dtype, f"{what}: dtype {out.dtype} != {same_dtype.dtype}"
    assert bool(torch.isfinite(out).all()), f"{what}: non-finite output (unwritten elements?)"
    scale = max(1.0, ref.abs().max().item())
    atol = ULP[out.dtype] * scale
    err_kernel = (float64(out) - ref).abs().max().item()
    err_torch = (float64(same_dtype) - ref).abs().max().item()
    assert err_kernel <= 2 * err_torch + atol, (
        f"{what}: kernel error {err_kernel:.3g} > 2 x PyTorch {out.dtype} error {err_torch:.3g} + {atol:.3g}")


def assert_layout(out: torch.Tensor, channels_last: bool) -> None:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt), f"output lost its layout: strides {out.stride()}"

"""Colour correction of the restored image against the (upsampled) degraded input.

Diffusion restorers drift in colour; both fixes keep the output's detail and take the input's colours.
- "adain": match each channel's mean and standard deviation (Huang & Belongie 2017), as StableSR offers.
- "wavelet": keep the output's high frequencies and the input's lowest band from an a-trous decomposition with a
  dilated 3x3 binomial kernel (StableSR, Wang et al. 2023, `wavelet_reconstruction`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

COLOR_FIXES = ("wavelet", "adain", "none")
WAVELET_LEVELS = 5


def color_fix(image: torch.Tensor, reference: torch.Tensor, method: str) -> torch.Tensor:
    """image, reference: [B, 3, H, W] of the same shape."""
    if method == "none":
        return image
    if method == "adain":
        return adain(image, reference)
    if method == "wavelet":
        return wavelet_low(reference) + (image - wavelet_low(image))
    raise ValueError(f"unknown colour fix {method!r}; use one of {', '.join(COLOR_FIXES)}")


def adain(image: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mean, std = image.mean((2, 3), keepdim=True), image.std((2, 3), keepdim=True)
    ref_mean, ref_std = reference.mean((2, 3), keepdim=True), reference.std((2, 3), keepdim=True)
    return (image - mean) / (std + eps) * ref_std + ref_mean


def wavelet_low(image: torch.Tensor, levels: int = WAVELET_LEVELS) -> torch.Tensor:
    """The lowest band after `levels` a-trous blurs (dilation 1, 2, 4, ...)."""
    kernel = torch.tensor([1.0, 2.0, 1.0], dtype=image.dtype, device=image.device)
    kernel = (kernel[:, None] * kernel[None, :] / 16).expand(image.shape[1], 1, 3, 3)
    low = image
    for level in range(levels):
        dilation = 2**level
        # Replicate padding: reflect needs the pad below the side length, which small images do not give.
        padded = F.pad(low, (dilation,) * 4, mode="replicate")
        low = F.conv2d(padded, kernel, groups=image.shape[1], dilation=dilation)
    return low

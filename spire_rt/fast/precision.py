"""The fast path's compute dtype: fp16 or bf16 on CUDA, and when fp16 is not safe.

SD 2.x UNets overflow fp16 in attention (black or NaN images; ORT forces fp32 attention for SD 2.1, and diffusers
sets `upcast_attention` for the 768-v model). bf16 has fp32's range at the same tensor-core rate on Ampere and
Hopper, so the fast path picks it for SD 2.x-like UNets, and falls back to it when an fp16 probe step is not finite.
"""

from __future__ import annotations

import torch

from ..backends.base import resolve_dtype


def fp16_overflow_risk(unet_config) -> bool:
    """SD 2.x: 1024-wide OpenCLIP conditioning, or a config that asks for upcast attention."""
    cross = unet_config.get("cross_attention_dim")
    widths = cross if isinstance(cross, (list, tuple)) else [cross]
    return bool(unet_config.get("upcast_attention")) or any(w is not None and w >= 1024 for w in widths)


def choose_dtype(unet_config, device: torch.device, requested=None) -> torch.dtype:
    """The requested dtype when given; else fp32 on the CPU, and bf16 (SD 2.x) or fp16 on CUDA."""
    if requested is not None:
        return resolve_dtype(requested, device)
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if fp16_overflow_risk(unet_config) else torch.float16


def is_finite(tensor: torch.Tensor) -> bool:
    """One host sync: use on a probe step, not in the loop."""
    return bool(torch.isfinite(tensor).all())

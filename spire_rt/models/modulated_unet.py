"""The frozen UNet's forward pass with SPIRE's modulation of its skip features and mid-block output.

    f_i' = (1 + s * gamma_i) * f_i + s * beta_i        (SPIRE.md "Modulation fusion")

Only what travels along the skips (and the mid output) is modulated; the main path through the down blocks is
not. This re-states `diffusers.UNet2DConditionModel.forward` for the plain Stable Diffusion layout, because the
modulation needs each skip feature itself (diffusers only lets a caller *add* residuals). No Python branching on
tensor values, so it traces to ONNX; the spatial size must be divisible by the UNet's total downsampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import UNet2DConditionModel


def modulate(feature: torch.Tensor, modulation: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """`(1 + s*gamma) * f + s*beta`, with `modulation = concat(gamma, beta)` along channels.

    The adaptor may run at a smaller batch than the UNet (once for both guidance branches); its batch of 1
    broadcasts. The fast GPU path replaces this function with a fused kernel.
    """
    gamma, beta = modulation.chunk(2, dim=1)
    return (1 + strength * gamma) * feature + strength * beta


def encoder_pass(down_blocks, mid_block, h, emb, encoder_hidden_states):
    """The down blocks then the mid block, as the UNet and its adaptor copy both run them.

    Returns the mid output and the skip features in order, `h` (the conv_in output) first.
    """
    features = [h]
    for block in down_blocks:
        if getattr(block, "has_cross_attention", False):
            h, block_features = block(hidden_states=h, temb=emb, encoder_hidden_states=encoder_hidden_states)
        else:
            h, block_features = block(hidden_states=h, temb=emb)
        features += block_features
    if getattr(mid_block, "has_cross_attention", False):
        h = mid_block(h, emb, encoder_hidden_states=encoder_hidden_states)
    else:
        h = mid_block(h, emb)
    return h, features


def unet_forward_modulated(
    unet: UNet2DConditionModel,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    modulations: Sequence[torch.Tensor],
    strength: torch.Tensor,
    modulate_fn=modulate,
) -> torch.Tensor:
    """The UNet's noise (or v) prediction with its skips and mid output modulated by the adaptor."""
    check_modulation_count(unet, modulations)
    encoded = unet_encode(unet, sample, timestep, encoder_hidden_states)
    return unet_decode_modulated(unet, encoded, encoder_hidden_states, modulations, strength, modulate_fn)


def check_modulation_count(unet: UNet2DConditionModel, modulations: Sequence[torch.Tensor]) -> None:
    num_skips = sum(len(block.resnets) for block in unet.up_blocks)
    if len(modulations) != num_skips + 1:
        raise ValueError(f"expected {num_skips + 1} modulations (skips + mid), got {len(modulations)}")


def unet_encode(unet: UNet2DConditionModel, sample, timestep, encoder_hidden_states):
    """Time embedding, conv_in, down blocks and mid block: the half that needs no modulation.

    Returns (mid output, skip features, time embedding). Split from the decoder so a caller can run the adaptor
    beside it (the fast path's second CUDA stream).
    """
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep))
    h = unet.conv_in(sample)
    h, skips = encoder_pass(unet.down_blocks, unet.mid_block, h, emb, encoder_hidden_states)
    return h, skips, emb


def unet_decode_modulated(unet: UNet2DConditionModel, encoded, encoder_hidden_states, modulations, strength,
                          modulate_fn=modulate) -> torch.Tensor:
    """Modulate the skips and the mid output of `unet_encode`, then the up blocks and the output head."""
    h, skips, emb = encoded
    strength = strength.to(h.dtype).reshape(-1, 1, 1, 1)
    skips = [modulate_fn(f, m, strength) for f, m in zip(skips, modulations[:-1])]
    h = modulate_fn(h, modulations[-1], strength)

    for block in unet.up_blocks:
        block_skips = tuple(skips[-len(block.resnets):])
        skips = skips[: -len(block.resnets)]
        if getattr(block, "has_cross_attention", False):
            h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=block_skips,
                      encoder_hidden_states=encoder_hidden_states)
        else:
            h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=block_skips)

    if unet.conv_norm_out is not None:
        h = unet.conv_act(unet.conv_norm_out(h))
    return unet.conv_out(h)

"""An optional fidelity branch for the VAE decoder: the degraded image, read at full resolution, steers decoding.

    decode(vae, latent)                        -> image       (no branch: the VAE's own decoder)
    decode(vae, latent, fidelity, y_image)     -> image       (the branch's features added inside the decoder)

A SPIRE restoration passes through a latent: the VAE's encoder keeps only what its latent can hold, so detail the
degraded input still has (an edge JPEG kept, texture a light blur left) can come back only as far as the decoder
can invent it. StableSR's controllable feature wrapping (Wang et al., "Exploiting Diffusion Prior for Real-World
Image Super-Resolution", 2023) hands the decoder the input's own features; DiffBIR and SUPIR do the same in their
own ways (../shared/research). This branch is the small form of it: a convolutional stem over the degraded image
(the pipeline's `y`, at the output size, in [-1, 1]) and a zero-initialised projection into the decoder at each
full-resolution point: the input of its last up block and the input of its output norm. A fresh branch therefore
changes nothing, and a model without one decodes exactly as before.

The stem sees 29 pixels across (a half-resolution path with dilated convolutions): enough to tell JPEG's 8x8 block
edges and ringing from the picture's own edges, which a plain two-convolution stem (5 pixels; tried on spire-tiny)
could not, so it handed the decoder the blocking back along with the detail. `FidelityBranch.widened` grows a
trained branch without changing its output; spire-tiny's went from 32 channels to 48 that way.

The branch is ours, not SPIRE.md's (its VAE decodes the final latent alone); a model folder holds it as
`fidelity/` (config.json + safetensors) and spire.json does not need to know: the folder's presence is the switch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from ..errors import ModelLoadError


class FidelityBranch(ModelMixin, ConfigMixin):
    """Features of the degraded image, projected to the decoder's channels at its full-resolution points."""

    @register_to_config
    def __init__(self, image_channels: int = 3, width: int = 32, point_channels: tuple[int, ...] = (64, 32)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(image_channels, width, 3, padding=1), nn.SiLU())
        self.context = nn.Sequential(  # at half resolution: receptive field 5, then 13, then 29 pixels
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=2, dilation=2), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=4, dilation=4), nn.SiLU())
        self.heads = nn.ModuleList(nn.Conv2d(width, channels, 3, padding=1) for channels in point_channels)
        for head in self.heads:  # zero: a fresh branch adds nothing
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    @classmethod
    def for_vae(cls, vae: AutoencoderKL, width: int = 32) -> FidelityBranch:
        return cls(image_channels=vae.config.out_channels, width=width, point_channels=decoder_points(vae))

    def widened(self, width: int) -> FidelityBranch:
        """This branch with `width` channels that computes exactly what this one does, so a trained model can grow
        its branch and carry on (`spire-rt train --stage decoder --fidelity-width`): the old channels keep their
        weights and never read the new ones; the new ones start as fresh convolutions, reaching the decoder only
        through head weights that start at zero, so training can put them to use from there."""
        old = self.config.width
        if width < old:
            raise ValueError(f"a fidelity branch can be widened, not narrowed: it has {old} channels, asked {width}")
        wide = FidelityBranch(self.config.image_channels, width, tuple(self.config.point_channels))
        wide.to(device=self.heads[0].weight.device, dtype=self.heads[0].weight.dtype)
        with torch.no_grad():
            for new, trained in zip(convolutions(wide.stem, wide.context), convolutions(self.stem, self.context)):
                out_old, in_old = trained.weight.shape[:2]
                new.weight[:out_old, :in_old] = trained.weight
                new.weight[:out_old, in_old:] = 0
                new.bias[:out_old] = trained.bias
            for new, trained in zip(wide.heads, self.heads):
                new.weight.zero_()
                new.weight[:, :old] = trained.weight
                new.bias.copy_(trained.bias)
        return wide

    def forward(self, y_image: torch.Tensor) -> list[torch.Tensor]:
        local = self.stem(y_image)
        context = F.interpolate(self.context(local), size=local.shape[2:], mode="nearest")
        features = local + context
        return [head(features) for head in self.heads]


def convolutions(*blocks: nn.Sequential) -> list[nn.Conv2d]:
    return [layer for block in blocks for layer in block if isinstance(layer, nn.Conv2d)]


def decoder_points(vae: AutoencoderKL) -> tuple[int, int]:
    """Channels at the two points the branch feeds: the last up block's input and the output norm's input."""
    channels = list(reversed(vae.config.block_out_channels))
    if len(channels) < 2:
        raise ModelLoadError("a fidelity branch needs a VAE decoder with at least two up blocks")
    return channels[-2], channels[-1]


def check_fits(branch: FidelityBranch, vae: AutoencoderKL) -> None:
    expected = decoder_points(vae)
    if tuple(branch.config.point_channels) != expected or branch.config.image_channels != vae.config.out_channels:
        raise ModelLoadError(f"fidelity branch ({branch.config.image_channels} image channels, points "
                             f"{tuple(branch.config.point_channels)}) does not fit this VAE (needs "
                             f"{vae.config.out_channels} and {expected})")


def decode(vae: AutoencoderKL, latent: torch.Tensor, fidelity: FidelityBranch | None = None,
           y_image: torch.Tensor | None = None) -> torch.Tensor:
    """The VAE decoder on an unscaled latent; with a branch, its features are added at the full-resolution points.

    Written out rather than hooked: diffusers' Decoder.forward with no latent_embeds (the plain AutoencoderKL).
    """
    if vae.post_quant_conv is not None:
        latent = vae.post_quant_conv(latent)
    decoder = vae.decoder
    if fidelity is None:
        return decoder(latent)
    into_last_block, into_norm = fidelity(y_image)
    sample = decoder.conv_in(latent)
    if decoder.mid_block is not None:
        sample = decoder.mid_block(sample)
    for up_block in decoder.up_blocks[:-1]:
        sample = up_block(sample)
    sample = decoder.up_blocks[-1](sample + into_last_block)
    sample = decoder.conv_norm_out(sample + into_norm)
    return decoder.conv_out(decoder.conv_act(sample))

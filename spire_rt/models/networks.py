"""The four networks every backend runs, as traceable `nn.Module`s with named tensor inputs and outputs.

    text_encoder(input_ids)                                   -> text_embeddings
    denoiser(sample, timestep, y_latent, restore_embeddings,
             semantic_embeddings, adaptor_strength, guidance_scale) -> model_output
    vae_encoder(image)                                        -> latent
    vae_decoder(latent, y_image)                              -> image

The denoiser is one guided sampling step: the adaptor runs once at batch B and its gamma/beta are shared by both
guidance branches of the UNet at batch 2B (SPIRE.md "Guidance on the semantic prompt"). Its unguided variant runs
everything at batch B. Images are in [-1, 1]; latents are already multiplied by the VAE's scaling factor.
The decoder's y_image is the degraded image at the output size: a model with a fidelity branch (fidelity.py)
reads it, any other ignores it (and its exported graph has no such input).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextModel

from .adaptor import SpireAdaptor
from .fidelity import FidelityBranch, decode
from .modulated_unet import modulate, unet_forward_modulated

# Each network's input and output names, in call order: the one place the backends and exporters read them.
NETWORK_INPUTS = {
    "text_encoder": ("input_ids",),
    "denoiser": ("sample", "timestep", "y_latent", "restore_embeddings", "semantic_embeddings",
                 "adaptor_strength", "guidance_scale"),
    "vae_encoder": ("image",),
    "vae_decoder": ("latent", "y_image"),
}
NETWORK_INPUTS["denoiser_guided"] = NETWORK_INPUTS["denoiser"]
NETWORK_OUTPUTS = {
    "text_encoder": ("text_embeddings",),
    "denoiser": ("model_output",),
    "denoiser_guided": ("model_output",),
    "vae_encoder": ("latent",),
    "vae_decoder": ("image",),
}
NETWORK_NAMES = tuple(NETWORK_INPUTS)


class TextEncoderNet(nn.Module):
    def __init__(self, text_encoder: CLIPTextModel, text_layer: str = "last"):
        super().__init__()
        if text_layer not in ("last", "penultimate"):
            raise ValueError(f"text_layer must be 'last' or 'penultimate', got {text_layer!r}")
        self.text_encoder = text_encoder
        self.text_layer = text_layer

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.text_layer == "last":
            return self.text_encoder(input_ids, return_dict=False)[0]
        # SD 2.x style: the penultimate layer, through the final layer norm (as diffusers' clip_skip=1 does).
        hidden_states = self.text_encoder(input_ids, output_hidden_states=True, return_dict=True).hidden_states
        # transformers 4 nests the layers under .text_model; 5 does not.
        text_model = getattr(self.text_encoder, "text_model", self.text_encoder)
        return text_model.final_layer_norm(hidden_states[-2])


class DenoiserNet(nn.Module):
    """One denoiser call of the sampler: adaptor, modulated UNet and (when guided) classifier-free guidance."""

    def __init__(self, unet: UNet2DConditionModel, adaptor: SpireAdaptor, guided: bool):
        super().__init__()
        self.unet = unet
        self.adaptor = adaptor
        self.guided = guided
        self.modulate_fn = modulate

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        y_latent: torch.Tensor,
        restore_embeddings: torch.Tensor,
        semantic_embeddings: torch.Tensor,
        adaptor_strength: torch.Tensor,
        guidance_scale: torch.Tensor,
    ) -> torch.Tensor:
        modulations = self.adaptor(sample, timestep, y_latent, restore_embeddings)
        if not self.guided:
            return unet_forward_modulated(self.unet, sample, timestep, semantic_embeddings, modulations,
                                          adaptor_strength, self.modulate_fn)
        # semantic_embeddings is [uncond; cond] (2B); the adaptor's batch-B modulations serve both halves.
        modulations = [m.repeat(2, 1, 1, 1) for m in modulations]
        both = unet_forward_modulated(self.unet, torch.cat([sample, sample]), timestep, semantic_embeddings,
                                      modulations, adaptor_strength, self.modulate_fn)
        return apply_guidance(both, guidance_scale)


def apply_guidance(both: torch.Tensor, guidance_scale: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance over the UNet's [uncond; cond] batch."""
    uncond, cond = both.chunk(2)
    return uncond + guidance_scale.to(uncond.dtype).reshape(-1, 1, 1, 1) * (cond - uncond)


class VaeEncoderNet(nn.Module):
    """Image in [-1, 1] -> the posterior mean, scaled: SPIRE conditions on E_vae(y) deterministically."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        moments = self.vae.encoder(image)
        if self.vae.quant_conv is not None:
            moments = self.vae.quant_conv(moments)
        mean = moments.chunk(2, dim=1)[0]
        return mean * self.vae.config.scaling_factor


class VaeDecoderNet(nn.Module):
    """Scaled latent -> image in [-1, 1]; with a fidelity branch, steered by the degraded image y_image."""

    def __init__(self, vae: AutoencoderKL, fidelity: FidelityBranch | None = None):
        super().__init__()
        self.vae = vae
        self.fidelity = fidelity

    def forward(self, latent: torch.Tensor, y_image: torch.Tensor | None = None) -> torch.Tensor:
        if self.fidelity is not None and y_image is None:
            raise ValueError("this model's decoder has a fidelity branch: it needs y_image, the degraded image")
        return decode(self.vae, latent / self.vae.config.scaling_factor, self.fidelity, y_image)

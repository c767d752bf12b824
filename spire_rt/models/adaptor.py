"""SPIRE's modulated adaptor: a ControlNet-style copy of the UNet's encoder half with gamma/beta fusion heads.

    adaptor(z_t, E_vae(y), t, E(c_r)) -> [(gamma_i, beta_i) for each UNet skip i] + [(gamma_mid, beta_mid)]

The encoder (conv_in, time embedding, down blocks, mid block) is the UNet's own architecture, built by diffusers
from the UNet's config, except that `conv_in` reads `concat(z_t, E_vae(y))` (SPIRE.md "Adaptor input", ours).
Each fusion head is a zero-initialised 1x1 conv from the adaptor's feature to `2*C` channels, so a fresh adaptor
modulates nothing and the model starts as the frozen prior (SPIRE.md "Modulation fusion", ours).
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import register_to_config
from torch import nn

from ..errors import ModelLoadError
from .modulated_unet import encoder_pass

# UNet features the modulated forward does not implement; a config using any of them is refused, not misread.
UNSUPPORTED_UNET_OPTIONS = {
    "class_embed_type": None,
    "addition_embed_type": None,
    "encoder_hid_dim_type": None,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "center_input_sample": False,
}


def check_supported_unet(config) -> None:
    for option, plain_value in UNSUPPORTED_UNET_OPTIONS.items():
        if config.get(option, plain_value) != plain_value:
            raise ModelLoadError(f"UNet option {option}={config[option]!r} is not supported by SPIRE's modulation")


def layers_per_level(unet_config) -> list[int]:
    """`layers_per_block` as one count per level: diffusers takes one number for all, or a list."""
    layers, levels = unet_config["layers_per_block"], len(unet_config["block_out_channels"])
    return [layers] * levels if isinstance(layers, int) else list(layers)


def skip_layout(unet_config) -> list[tuple[int, int]]:
    """(level, channels) of each skip feature the UNet's down pass hands to its up pass, in order (conv_in
    first); level 0 is the full latent resolution."""
    widths = list(unet_config["block_out_channels"])
    layout = [(0, widths[0])]
    for level, (width, count) in enumerate(zip(widths, layers_per_level(unet_config))):
        layout += [(level, width)] * count
        if level != len(widths) - 1:
            layout.append((level + 1, width))  # the downsampler's output, at the next level's resolution
    return layout


def skip_channels(unet_config) -> list[int]:
    """Channels of the skip features, in skip_layout's order."""
    return [channels for _, channels in skip_layout(unet_config)]


class SpireAdaptor(ModelMixin, ConfigMixin):
    """The trainable adaptor. Saved and loaded as a diffusers model folder (`config.json` + safetensors)."""

    @register_to_config
    def __init__(self, unet_config: dict, condition_channels: int = 4):
        super().__init__()
        check_supported_unet(unet_config)
        latent_channels = unet_config["in_channels"]
        # Build the UNet's own blocks, then keep the encoder half: this guarantees the same layout as the prior.
        encoder_config = {k: v for k, v in unet_config.items() if not k.startswith("_")}
        encoder = UNet2DConditionModel(**{**encoder_config, "in_channels": latent_channels + condition_channels})
        self.conv_in = encoder.conv_in
        self.time_proj = encoder.time_proj
        self.time_embedding = encoder.time_embedding
        self.down_blocks = encoder.down_blocks
        self.mid_block = encoder.mid_block
        del encoder

        self.skip_heads = nn.ModuleList(zero_conv(c, 2 * c) for c in skip_channels(unet_config))
        mid_channels = unet_config["block_out_channels"][-1]
        self.mid_head = zero_conv(mid_channels, 2 * mid_channels)

    @property
    def num_modulations(self) -> int:
        return len(self.skip_heads) + 1

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        condition: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
    ) -> list[torch.Tensor]:
        """Returns one `[B, 2C, h, w]` tensor per skip and one for the mid output: gamma and beta concatenated."""
        timesteps = timestep.to(sample.device).reshape(-1).expand(sample.shape[0])
        emb = self.time_embedding(self.time_proj(timesteps).to(sample.dtype))
        h = self.conv_in(torch.cat([sample, condition], dim=1))

        h, features = encoder_pass(self.down_blocks, self.mid_block, h, emb, encoder_hidden_states)

        modulations = [head(feature) for head, feature in zip(self.skip_heads, features)]
        modulations.append(self.mid_head(h))
        return modulations


def zero_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def init_adaptor_from_unet(unet: UNet2DConditionModel, condition_channels: int | None = None) -> SpireAdaptor:
    """A fresh adaptor whose encoder is a copy of the UNet's, with conv_in's extra (condition) inputs at zero."""
    config = dict(unet.config)
    condition_channels = condition_channels or config["in_channels"]
    adaptor = SpireAdaptor(unet_config=config, condition_channels=condition_channels)
    for name in ("time_proj", "time_embedding", "down_blocks", "mid_block"):
        getattr(adaptor, name).load_state_dict(getattr(unet, name).state_dict())
    with torch.no_grad():
        latent_channels = config["in_channels"]
        adaptor.conv_in.weight.zero_()
        adaptor.conv_in.weight[:, :latent_channels].copy_(unet.conv_in.weight)
        adaptor.conv_in.bias.copy_(unet.conv_in.bias)
    return adaptor.to(dtype=unet.dtype)

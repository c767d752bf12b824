"""Architecture presets: the diffusers/transformers configs of each SPIRE model that the runtime knows by name.

A preset is what `Restorer.from_pretrained("sd21-base")` builds when no folder is given: the architecture with
seeded random weights (for benchmarks and tests), or, for `tiny`, the weights the project ships when present.
Real weights arrive as diffusers-format folders and bring their own configs; these are only the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ModelLoadError


@dataclass(frozen=True)
class Preset:
    name: str
    unet: dict
    vae: dict
    text_encoder: dict
    scheduler: dict
    # "last": the encoder's final hidden state; "penultimate": the one before it, through the final layer norm.
    text_layer: str = "last"
    seed: int = 0
    description: str = ""
    tokenizer_max_length: int = 77
    extra: dict = field(default_factory=dict)


SD_SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
}

SD_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

SD_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}

SD21_BASE = Preset(
    name="sd21-base",
    description="Stable Diffusion 2.1 base layout (865M UNet), OpenCLIP ViT-H/14 text tower",
    unet={**SD_UNET, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
          "use_linear_projection": True},
    vae=SD_VAE,
    # diffusers ships SD 2.x's OpenCLIP tower already cut to 23 of its 24 layers, so its last layer *is* the
    # penultimate one SD 2.x conditions on; "last" here reproduces that.
    text_encoder={"vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
                  "num_attention_heads": 16, "max_position_embeddings": 77, "hidden_act": "gelu",
                  "projection_dim": 512},
    scheduler=SD_SCHEDULER,
)

SD15 = Preset(
    name="sd15",
    description="Stable Diffusion 1.5 layout (860M UNet), CLIP ViT-L/14 text encoder",
    unet={**SD_UNET, "attention_head_dim": 8, "cross_attention_dim": 768},
    vae=SD_VAE,
    text_encoder={"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                  "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                  "projection_dim": 768},
    scheduler=SD_SCHEDULER,
)

TINY = Preset(
    name="tiny",
    description="the project's small SPIRE model: 2x/8-channel latent, 32/64/128-channel UNet (1 layer per "
                "block), 2-layer text encoder",
    unet={
        "sample_size": 64,
        "in_channels": 8,
        "out_channels": 8,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": [32, 64, 128],
        "layers_per_block": 1,
        "attention_head_dim": 4,
        "cross_attention_dim": 64,
        "norm_num_groups": 16,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
    },
    # A 2x, 8-channel latent: a shallow VAE whose reconstruction stays well above the restoration targets after
    # minutes of CPU training; no mid-block attention, so crops and whole images see the same network.
    vae={
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 2,
        "up_block_types": ["UpDecoderBlock2D"] * 2,
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "latent_channels": 8,
        "norm_num_groups": 16,
        "sample_size": 256,
        "scaling_factor": 1.0,
        "mid_block_add_attention": False,
    },
    text_encoder={"vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                  "projection_dim": 64},
    scheduler={**SD_SCHEDULER, "prediction_type": "v_prediction"},
)

# tiny, widened where a restoration's detail passes: the VAE (64/128 channels, 2 layers per block) and the UNet's
# full-latent-resolution level (64 channels); the deeper levels, where most parameters sit, stay as they are, so
# the fp16 weights stay under the 30 MB a shipped model may take. About 2.5x tiny's CPU time per restoration.
TINY_WIDE = Preset(
    name="tiny-wide",
    description="tiny with a 64/128-channel, 2-layer VAE and a 64/96/128-channel UNet; sized for GPU training",
    unet={**TINY.unet, "block_out_channels": [64, 96, 128]},
    vae={**TINY.vae, "block_out_channels": [64, 128], "layers_per_block": 2},
    text_encoder=TINY.text_encoder,
    scheduler=TINY.scheduler,
)

PRESETS = {preset.name: preset for preset in (SD21_BASE, SD15, TINY, TINY_WIDE)}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ModelLoadError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None

"""The modulated UNet against diffusers' own UNet2DConditionModel, and against an independent reference."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import randomize_heads

from spire_rt.models import modulate, unet_forward_modulated
from spire_rt.models.adaptor import skip_channels, skip_layout


def inputs(model, batch=1, size=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    channels = model.latent_channels
    sample = torch.randn(batch, channels, size, size, generator=generator)
    condition = torch.randn(batch, channels, size, size, generator=generator)
    width = model.text_encoder.config.hidden_size
    embeddings = torch.randn(batch, 77, width, generator=generator)
    restore = torch.randn(batch, 77, width, generator=generator)
    return sample, torch.tensor([321]), condition, embeddings, restore


def test_strength_zero_is_diffusers_unet(tiny_model_copy):
    model = tiny_model_copy
    randomize_heads(model.controlnet)  # non-zero gamma/beta, which strength 0 must switch off exactly
    sample, timestep, condition, embeddings, restore = inputs(model, batch=2)
    with torch.no_grad():
        modulations = model.controlnet(sample, timestep, condition, restore)
        ours = unet_forward_modulated(model.unet, sample, timestep, embeddings, modulations, torch.tensor([0.0]))
        reference = model.unet(sample, timestep, embeddings).sample
    assert (ours - reference).abs().max() <= 1e-5


def capture_unmodulated_features(unet, sample, timestep, embeddings):
    """Skip features and mid output of a plain diffusers forward pass, taken with forward hooks."""
    skips, mids = [], []
    hooks = [unet.conv_in.register_forward_hook(lambda m, i, out: skips.append(out))]
    for block in unet.down_blocks:
        hooks.append(block.register_forward_hook(lambda m, i, out: skips.extend(out[1])))
    hooks.append(unet.mid_block.register_forward_hook(lambda m, i, out: mids.append(out)))
    unet(sample, timestep, embeddings)
    for hook in hooks:
        hook.remove()
    return skips, mids[0]


@pytest.mark.parametrize("layout", ["tiny", "per_level"])
def test_random_heads_match_independent_reference(layout, request):
    """(1 + s*g) f + s*b == f + s*(g f + b): feed the second form to diffusers as ControlNet residuals, for one
    layer count per level and for counts that differ by level."""
    model = copy.deepcopy(request.getfixturevalue("tiny_model" if layout == "tiny" else "per_level_model"))
    randomize_heads(model.controlnet, scale=0.2)
    sample, timestep, condition, embeddings, restore = inputs(model, batch=2, seed=3)
    strength = 0.7
    with torch.no_grad():
        modulations = model.controlnet(sample, timestep, condition, restore)
        assert max(m.abs().max() for m in modulations) > 0.05
        ours = unet_forward_modulated(model.unet, sample, timestep, embeddings, modulations,
                                      torch.tensor([strength]))
        skips, mid = capture_unmodulated_features(model.unet, sample, timestep, embeddings)
        residuals = []
        for feature, modulation in zip(skips, modulations[:-1]):
            gamma, beta = modulation.chunk(2, dim=1)
            residuals.append(strength * (gamma * feature + beta))
        gamma, beta = modulations[-1].chunk(2, dim=1)
        reference = model.unet(sample, timestep, embeddings, down_block_additional_residuals=residuals,
                               mid_block_additional_residual=strength * (gamma * mid + beta)).sample
        plain = model.unet(sample, timestep, embeddings).sample
    assert (ours - plain).abs().max() > 1e-3  # the modulation really changed the output
    assert (ours - reference).abs().max() <= 1e-5


def test_skip_layout_matches_unet(tiny_model):
    channels = skip_channels(tiny_model.unet.config)
    assert len(tiny_model.controlnet.skip_heads) == len(channels)
    assert sum(len(block.resnets) for block in tiny_model.unet.up_blocks) == len(channels)
    sd_config = {"block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2}
    assert skip_channels(sd_config) == [320, 320, 320, 320, 640, 640, 640, 1280, 1280, 1280, 1280, 1280]


def test_skip_layout_with_layers_given_per_level(per_level_model):
    unet = per_level_model.unet
    assert skip_layout(unet.config) == [(0, 32), (0, 32), (0, 32), (1, 32), (1, 64), (2, 64), (2, 128)]
    assert [len(block.resnets) for block in unet.up_blocks] == [2, 2, 3]
    assert [head.in_channels for head in per_level_model.controlnet.skip_heads] == skip_channels(unet.config)


def test_modulate_formula():
    feature = torch.randn(2, 3, 4, 5)
    gamma, beta = torch.randn(1, 3, 4, 5), torch.randn(1, 3, 4, 5)
    out = modulate(feature, torch.cat([gamma, beta], dim=1), torch.tensor([0.5]).reshape(-1, 1, 1, 1))
    torch.testing.assert_close(out, (1 + 0.5 * gamma) * feature + 0.5 * beta)


def test_wrong_number_of_modulations_is_an_error(tiny_model):
    sample, timestep, _, embeddings, _ = inputs(tiny_model)
    try:
        unet_forward_modulated(tiny_model.unet, sample, timestep, embeddings, [], torch.tensor([1.0]))
    except ValueError as error:
        assert "modulations" in str(error)
    else:
        raise AssertionError("expected a ValueError")

"""models/deepen.py: one more resnet in a UNet level and its adaptor copy, the modulated output unchanged."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import randomize_heads
from diffusers import UNet2DConditionModel

from spire_rt.errors import ModelLoadError
from spire_rt.models import unet_forward_modulated
from spire_rt.models.adaptor import init_adaptor_from_unet
from spire_rt.models.deepen import deepened, skip_head_sources


def modulated_output(unet, adaptor, seed=0):
    generator = torch.Generator().manual_seed(seed)
    channels = unet.config.in_channels
    sample = torch.randn(2, channels, 16, 16, generator=generator)
    condition = torch.randn(2, channels, 16, 16, generator=generator)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        modulations = adaptor(sample, torch.tensor([59]), condition, text)
        return unet_forward_modulated(unet, sample, torch.tensor([59]), text, modulations, torch.tensor([0.8]))


@pytest.fixture(scope="module")
def modulating_model(tiny_model):
    """tiny with non-zero fusion heads: the skips the new layers copy or drop are really modulated."""
    model = copy.deepcopy(tiny_model)
    randomize_heads(model.controlnet, scale=0.2)
    return model


@pytest.mark.parametrize("times", [1, 2])
def test_deepened_model_gives_the_same_output(modulating_model, times):
    unet, adaptor = modulating_model.unet, modulating_model.controlnet
    before = modulated_output(unet, adaptor)
    for _ in range(times):
        unet, adaptor = deepened(unet, adaptor, 0)
    assert list(unet.config.layers_per_block) == [1 + times, 1, 1]
    assert [len(block.resnets) for block in unet.up_blocks] == [2, 2, 2 + times]
    assert len(adaptor.skip_heads) == len(modulating_model.controlnet.skip_heads) + times
    torch.testing.assert_close(modulated_output(unet, adaptor), before, rtol=0, atol=1e-6)


def test_new_layers_are_live_and_the_dropped_skip_is_the_only_idle_head(modulating_model):
    """The identity comes from zeros that training moves, not from layers cut off the path: perturbing each new
    part moves the output, except the head of the skip the pass-through resnet drops (it is read once that
    resnet's conv2 leaves zero)."""
    before = modulated_output(modulating_model.unet, modulating_model.controlnet)
    # conv_in, the level's resnet, the downsampler, ...: the new head 1 starts at zero, 2 takes the old head 1
    assert skip_head_sources([(0, 32), (0, 32), (1, 32), (1, 64)], 0) == [0, None, 1, 2, 3]

    def moved(perturb) -> float:
        unet, adaptor = deepened(modulating_model.unet, modulating_model.controlnet, 0)
        with torch.no_grad():
            perturb(unet, adaptor).normal_(0, 0.05)
        return float((modulated_output(unet, adaptor) - before).abs().max())

    assert moved(lambda unet, adaptor: unet.down_blocks[0].resnets[1].conv2.weight) > 1e-3
    assert moved(lambda unet, adaptor: unet.up_blocks[2].resnets[1].conv2.weight) > 1e-3
    assert moved(lambda unet, adaptor: adaptor.down_blocks[0].resnets[1].conv2.weight) > 1e-3
    assert moved(lambda unet, adaptor: adaptor.skip_heads[2].weight) > 1e-3  # the copy's head: the old head
    assert moved(lambda unet, adaptor: adaptor.skip_heads[1].weight) == 0.0  # read by the pass-through resnet


def test_a_lower_plain_level_deepens_too(tiny_model):
    """Level 1 of a UNet whose two upper levels are plain: its skips start with the downsampler's output from
    level 0, which the head remapping must step over."""
    config = {**tiny_model.unet.config, "down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
              "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"]}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        unet = UNet2DConditionModel(**config)
    adaptor = init_adaptor_from_unet(unet)
    randomize_heads(adaptor, scale=0.2)
    unet.eval()
    before = modulated_output(unet, adaptor)
    grown_unet, grown_adaptor = deepened(unet, adaptor, 1)
    assert list(grown_unet.config.layers_per_block) == [1, 2, 1]
    assert not grown_unet.training and grown_adaptor.training  # each keeps its original's mode
    torch.testing.assert_close(modulated_output(grown_unet, grown_adaptor), before, rtol=0, atol=1e-6)


def test_levels_with_attention_or_out_of_range_are_refused(tiny_model):
    with pytest.raises(ModelLoadError, match="level 1 has CrossAttnDownBlock2D / CrossAttnUpBlock2D blocks"):
        deepened(tiny_model.unet, tiny_model.controlnet, 1)
    with pytest.raises(ModelLoadError, match="levels 0 .. 2"):
        deepened(tiny_model.unet, tiny_model.controlnet, 3)

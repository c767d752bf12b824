"""Network descriptors: names from networks.py, dims and ranges, feed checks with one-line errors."""

from __future__ import annotations

import pytest
import torch

from spire_rt.errors import OptionError
from spire_rt.export import ShapeError
from spire_rt.export.descriptors import (
    ALL_NETWORKS,
    PIPELINE_NETWORKS,
    ShapeProfile,
    descriptor,
    modulation_names,
    parse_networks,
)
from spire_rt.models.networks import NETWORK_INPUTS, NETWORK_OUTPUTS


def test_names_come_from_networks_module(tiny_model):
    profile = ShapeProfile.default(tiny_model)
    for network in PIPELINE_NETWORKS:
        desc = descriptor(network, tiny_model, profile)
        assert desc.input_names == NETWORK_INPUTS[network]
        assert desc.output_names == NETWORK_OUTPUTS[network]
    unet = descriptor("unet", tiny_model, profile)
    adaptor = descriptor("adaptor", tiny_model, profile)
    assert adaptor.output_names == modulation_names(tiny_model)
    assert unet.input_names[4:] == adaptor.output_names  # the split pair's hand-over tensors
    assert set(unet.input_names[:4]) <= set(NETWORK_INPUTS["denoiser"])
    assert set(ALL_NETWORKS) == set(PIPELINE_NETWORKS) | {"unet", "adaptor"}


@pytest.mark.parametrize("layout", ["tiny_model", "per_level_model"])
@pytest.mark.parametrize("point", ["min", "max"])
def test_split_shapes_match_the_adaptor(layout, point, request):
    """The descriptor's modulation shapes are what the adaptor really produces, at both ends of the range, with
    one layer count per level and with counts that differ by level."""
    tiny_model = request.getfixturevalue(layout)
    profile = ShapeProfile.dynamic(16, 48, (32, 32))
    adaptor = descriptor("adaptor", tiny_model, profile)
    feeds = adaptor.sample_inputs(point)
    with torch.no_grad():
        outputs = adaptor.module()(*[feeds[name] for name in adaptor.input_names])
    expected = adaptor.shapes(point)
    assert [tuple(out.shape) for out in outputs] == [expected[name] for name in adaptor.output_names]
    assert adaptor.output_shapes(adaptor.check_feeds(feeds)) == {name: expected[name]
                                                                 for name in adaptor.output_names}


def test_static_profile_has_no_dynamic_image_axes(tiny_model):
    static = descriptor("denoiser_guided", tiny_model, ShapeProfile.static((64, 64)))
    assert static.dynamic_axes() == {}
    dynamic = descriptor("denoiser_guided", tiny_model, ShapeProfile.default(tiny_model))
    assert dynamic.dynamic_axes()["sample"] == {2: "h", 3: "w"}
    assert "semantic_embeddings" not in dynamic.dynamic_axes()  # batch 1 only
    batched = descriptor("denoiser_guided", tiny_model, ShapeProfile.dynamic(16, 64, (32, 32), max_batch=2))
    assert batched.dynamic_axes()["semantic_embeddings"] == {0: "2B"}
    text = descriptor("text_encoder", tiny_model, ShapeProfile.static((64, 64)))
    assert text.dynamic_axes() == {"input_ids": {0: "T"}, "text_embeddings": {0: "T"}}  # prompts batch together


def test_profile_parsing(tiny_model):
    assert ShapeProfile.parse("64x32", None, tiny_model).opt_size == (64, 32)
    dynamic = ShapeProfile.parse(None, "32:128:64", tiny_model)
    assert (dynamic.min_size, dynamic.opt_size, dynamic.max_size) == ((32, 32), (64, 64), (128, 128))
    for size, dyn in (("64x30", None), ("big", None), (None, "128:32"), ("64x64", "32:64"), (None, "1:2:3:4")):
        with pytest.raises(OptionError):
            ShapeProfile.parse(size, dyn, tiny_model)
    with pytest.raises(OptionError, match="unknown network"):
        parse_networks("denoiser,nope")
    assert parse_networks("all") == ALL_NETWORKS


def test_feed_checks_give_one_line_errors(tiny_model):
    desc = descriptor("denoiser_guided", tiny_model, ShapeProfile.dynamic(16, 64, (32, 32)))
    feeds = desc.sample_inputs("opt")
    bound = desc.check_feeds(feeds)
    assert bound["2B"] == 2 * bound["B"]
    side = desc.dims("max")["h"] + tiny_model.pixel_multiple // tiny_model.vae_scale_factor
    too_big = dict(feeds, sample=torch.zeros(1, tiny_model.latent_channels, side, side),
                   y_latent=torch.zeros(1, tiny_model.latent_channels, side, side))
    with pytest.raises(ShapeError, match="outside the exported range") as error:
        desc.check_feeds(too_big)
    assert "\n" not in str(error.value)
    with pytest.raises(ShapeError, match="another input"):
        side = desc.dims("min")["h"]  # in range, but not the sample's size
        desc.check_feeds(dict(feeds, y_latent=torch.zeros(1, tiny_model.latent_channels, side, side)))
    with pytest.raises(ShapeError, match="larger --batch"):
        desc.check_feeds(dict(feeds, semantic_embeddings=feeds["semantic_embeddings"][:1]))
    batched = descriptor("denoiser_guided", tiny_model, ShapeProfile.dynamic(16, 64, (32, 32), max_batch=2))
    with pytest.raises(ShapeError, match="twice the image batch"):
        batched.check_feeds(dict(feeds, semantic_embeddings=torch.cat([feeds["semantic_embeddings"]] * 2)))
    with pytest.raises(ShapeError, match="missing input"):
        desc.check_feeds({name: value for name, value in feeds.items() if name != "timestep"})
    decoder = descriptor("vae_decoder", tiny_model, ShapeProfile.dynamic(16, 64, (32, 32)))
    feeds = decoder.sample_inputs("opt")
    assert decoder.check_feeds(feeds)["H"] == 32
    with pytest.raises(ShapeError, match="image side of 16 px does not match a latent side of 16"):
        decoder.check_feeds(dict(feeds, y_image=feeds["y_image"][:, :, :16]))

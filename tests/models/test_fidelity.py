"""The decoder's fidelity branch: identity when fresh, the same decoder diffusers runs, saved and loaded with a
model folder, refused when it does not fit."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch
from conftest import randomize_fidelity

from spire_rt.errors import ModelLoadError
from spire_rt.models import build_preset, load_model
from spire_rt.models.fidelity import FidelityBranch, decode
from spire_rt.models.networks import VaeDecoderNet


def inputs(model, seed: int = 0, side: int = 32):
    generator = torch.Generator().manual_seed(seed)
    latent = torch.randn(2, model.latent_channels, side // model.vae_scale_factor, side // model.vae_scale_factor,
                         generator=generator)
    return latent, torch.rand(2, 3, side, side, generator=generator) * 2 - 1


def test_plain_decode_is_diffusers_decode(tiny_model):
    latent, _ = inputs(tiny_model)
    with torch.no_grad():
        expected = tiny_model.vae.decode(latent / tiny_model.vae.config.scaling_factor).sample
        got = VaeDecoderNet(tiny_model.vae)(latent)
    torch.testing.assert_close(got, expected)


def test_fresh_branch_changes_nothing(tiny_model):
    """Zero-initialised heads: a model that gains a branch decodes exactly as before until it is trained."""
    latent, y_image = inputs(tiny_model)
    branch = FidelityBranch.for_vae(tiny_model.vae)
    with torch.no_grad():
        torch.testing.assert_close(VaeDecoderNet(tiny_model.vae, branch)(latent, y_image),
                                   VaeDecoderNet(tiny_model.vae)(latent), rtol=0, atol=0)


def test_branch_is_added_where_documented(tiny_model):
    """The written-out decoder equals diffusers' own Decoder.forward with the branch's features added, by hooks,
    at the last up block's input and the output norm's input; and y_image moves the result."""
    latent, y_image = inputs(tiny_model)
    branch = randomize_fidelity(FidelityBranch.for_vae(tiny_model.vae))
    decoder = tiny_model.vae.decoder
    with torch.no_grad():
        into_block, into_norm = branch(y_image)
        hooks = [decoder.up_blocks[-1].register_forward_pre_hook(lambda m, args: (args[0] + into_block,)),
                 decoder.conv_norm_out.register_forward_pre_hook(lambda m, args: (args[0] + into_norm,))]
        try:
            expected = tiny_model.vae.decode(latent / tiny_model.vae.config.scaling_factor).sample
        finally:
            for hook in hooks:
                hook.remove()
        got = decode(tiny_model.vae, latent / tiny_model.vae.config.scaling_factor, branch, y_image)
        other = decode(tiny_model.vae, latent / tiny_model.vae.config.scaling_factor, branch, -y_image)
    torch.testing.assert_close(got, expected)
    assert (other - got).abs().max() > 1e-3


def test_branch_needs_y_image(tiny_model):
    latent, _ = inputs(tiny_model)
    with pytest.raises(ValueError, match="y_image"):
        VaeDecoderNet(tiny_model.vae, FidelityBranch.for_vae(tiny_model.vae))(latent)


def test_saved_and_loaded_with_the_folder(tmp_path):
    model = dataclasses.replace(build_preset("tiny"), trained=True)
    model.fidelity = randomize_fidelity(FidelityBranch.for_vae(model.vae))
    model.save(tmp_path / "m")
    assert (tmp_path / "m" / "fidelity" / "config.json").is_file()
    loaded = load_model(tmp_path / "m")
    assert "fidelity" in loaded.modules()
    latent, y_image = inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded.networks()["vae_decoder"](latent, y_image),
                                   model.networks()["vae_decoder"](latent, y_image))
    shutil.rmtree(tmp_path / "m" / "fidelity")
    assert load_model(tmp_path / "m").fidelity is None


def test_a_branch_that_does_not_fit_is_refused(tmp_path):
    model = build_preset("tiny")
    model.fidelity = FidelityBranch(point_channels=(48, 32))
    model.save(tmp_path / "m")
    with pytest.raises(ModelLoadError, match="fidelity.*does not fit"):
        load_model(tmp_path / "m")


def test_widened_branch_computes_the_same_and_can_then_learn(tiny_model):
    """A trained branch grown wider decodes exactly as before; its new channels reach the decoder only through
    head weights that start at zero (and get a gradient, so training can use them); narrowing is refused."""
    latent, y_image = inputs(tiny_model)
    branch = randomize_fidelity(FidelityBranch.for_vae(tiny_model.vae, width=8))
    wide = branch.widened(12)
    assert wide.config.width == 12 and wide.config.point_channels == branch.config.point_channels
    with torch.no_grad():
        for narrow_features, wide_features in zip(branch(y_image), wide(y_image)):
            torch.testing.assert_close(wide_features, narrow_features)
        torch.testing.assert_close(VaeDecoderNet(tiny_model.vae, wide)(latent, y_image),
                                   VaeDecoderNet(tiny_model.vae, branch)(latent, y_image))
    assert all(not head.weight[:, 8:].any() for head in wide.heads)
    assert wide.stem[0].weight[8:].abs().sum() > 0  # the new channels are not dead: they carry features
    sum(features.square().sum() for features in wide(y_image)).backward()
    assert all(head.weight.grad[:, 8:].abs().sum() > 0 for head in wide.heads)
    assert branch.widened(8).state_dict().keys() == branch.state_dict().keys()
    with pytest.raises(ValueError, match="widened, not narrowed: it has 8 channels, asked 4"):
        branch.widened(4)

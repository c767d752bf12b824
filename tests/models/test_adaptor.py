"""The adaptor starts as a copy of the UNet's encoder and as an exact identity on the UNet."""

from __future__ import annotations

import torch

from spire_rt.models import init_adaptor_from_unet


def test_fresh_adaptor_copies_encoder_and_modulates_nothing(tiny_model):
    unet = tiny_model.unet
    adaptor = init_adaptor_from_unet(unet)
    for name in ("time_embedding", "down_blocks", "mid_block"):
        ours, theirs = getattr(adaptor, name).state_dict(), getattr(unet, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[key], theirs[key]) for key in ours)
    latent = unet.config.in_channels
    assert torch.equal(adaptor.conv_in.weight[:, :latent], unet.conv_in.weight)
    assert adaptor.conv_in.weight[:, latent:].abs().max() == 0

    sample = torch.randn(1, latent, 16, 16)
    width = tiny_model.text_encoder.config.hidden_size
    with torch.no_grad():
        modulations = adaptor(sample, torch.tensor([10]), torch.randn(1, latent, 16, 16), torch.randn(1, 77, width))
    assert len(modulations) == adaptor.num_modulations
    assert all(m.abs().max() == 0 for m in modulations)


def test_adaptor_encoder_features_equal_unet_with_zero_condition(tiny_model):
    """With the condition channels zeroed, the adaptor's encoder computes exactly what the UNet's does."""
    unet, adaptor = tiny_model.unet, init_adaptor_from_unet(tiny_model.unet)
    captured = {"unet": [], "adaptor": []}
    hooks = [unet.mid_block.register_forward_hook(lambda m, i, out: captured["unet"].append(out)),
             adaptor.mid_block.register_forward_hook(lambda m, i, out: captured["adaptor"].append(out))]
    latent = tiny_model.latent_channels
    sample = torch.randn(1, latent, 16, 16)
    embeddings = torch.randn(1, 77, tiny_model.text_encoder.config.hidden_size)
    with torch.no_grad():
        unet(sample, torch.tensor([500]), embeddings)
        adaptor(sample, torch.tensor([500]), torch.randn(1, latent, 16, 16), embeddings)
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(captured["adaptor"][0], captured["unet"][0], atol=1e-5, rtol=0)

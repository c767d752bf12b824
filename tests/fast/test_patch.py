"""The patched model computes what the unpatched one does: the patching logic, on the CPU.

The fused ops are their PyTorch references here (exact same arithmetic), so any difference is a patching bug; one
test runs the up path's Triton kernels under the interpreter, and the GPU tests in test_backend.py run them all.
"""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_heads
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from spire_rt.fast import FastOps, PendingSkip, patch_model
from spire_rt.kernels import triton_available


def denoiser_inputs(model, size=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    channels = model.unet.config.in_channels
    width = model.text_encoder.config.hidden_size
    sample = torch.randn(1, channels, size, size, generator=generator)
    y_latent = torch.randn(1, channels, size, size, generator=generator)
    restore = torch.randn(1, 77, width, generator=generator)
    semantic = torch.randn(2, 77, width, generator=generator)
    return sample, torch.tensor([321]), y_latent, restore, semantic, torch.tensor([0.7]), torch.tensor([4.0])


def run_all(model, networks, inputs):
    sample, timestep, y_latent, restore, semantic, strength, guidance = inputs
    with torch.no_grad():
        return {
            "denoiser_guided": networks["denoiser_guided"](*inputs),
            "denoiser": networks["denoiser"](sample, timestep, y_latent, restore, semantic[1:], strength, guidance),
            "vae_encoder": networks["vae_encoder"](torch.rand(1, 3, 32, 48) * 2 - 1),
            "vae_decoder": networks["vae_decoder"](sample[:, : model.vae.config.latent_channels]),
        }


@pytest.fixture()
def model(tiny_model_copy):
    randomize_heads(tiny_model_copy.controlnet, scale=0.2)  # non-zero gamma/beta, so the modulation matters
    return tiny_model_copy


def test_reference_ops_match_unpatched(model):
    networks = model.networks()
    inputs = denoiser_inputs(model)
    torch.manual_seed(0)
    before = run_all(model, networks, inputs)
    patches = patch_model(model, networks, FastOps.reference())
    torch.manual_seed(0)
    after = run_all(model, networks, inputs)
    for name, expected in before.items():
        scale = expected.abs().max().item()
        assert (after[name] - expected).abs().max().item() <= 1e-5 * max(1.0, scale), name
    patches.undo()


def test_overlapped_forward_matches_unpatched(model):
    """The adaptor forked beside the UNet's encoder (run in turn off the GPU), with broadcast modulations."""
    networks = model.networks()
    inputs = denoiser_inputs(model, seed=5)
    before = run_all(model, networks, inputs)
    patches = patch_model(model, networks, FastOps.reference(), overlap=True)
    assert patches.counts["overlap"] == 2
    assert "forward" in networks["denoiser_guided"].__dict__
    after = run_all(model, networks, inputs)
    for name in ("denoiser_guided", "denoiser"):
        scale = before[name].abs().max().item()
        assert (after[name] - before[name]).abs().max().item() <= 1e-5 * max(1.0, scale), name
    patches.undo()
    assert "forward" not in networks["denoiser_guided"].__dict__


def test_everything_meant_to_be_patched_is(model):
    networks = model.networks()
    patches = patch_model(model, networks, FastOps.reference())
    resnets = sum(isinstance(m, ResnetBlock2D) for part in (model.unet, model.controlnet, model.vae)
                  for m in part.modules())
    assert patches.counts["resnet"] == resnets
    assert patches.counts["up_block"] == len(model.unet.up_blocks)
    assert patches.counts["modulate_fn"] == 2  # both denoisers, deferred to the up blocks
    assert networks["denoiser_guided"].modulate_fn.__name__ == "deferred_modulate"
    assert patches.counts["geglu"] > 0 and patches.counts["fused_qkv"] > 0
    assert patches.counts["norm_out"] == 3  # UNet, VAE encoder, VAE decoder
    assert isinstance(model.unet.conv_act, nn.Identity)


def test_undo_restores_the_model(model):
    networks = model.networks()
    inputs = denoiser_inputs(model, seed=1)
    with torch.no_grad():
        before = networks["denoiser_guided"](*inputs)
    state_keys = set(model.unet.state_dict())
    patch_model(model, networks, FastOps.reference()).undo()
    for part in (model.unet, model.controlnet, model.vae):
        for module in part.modules():
            assert "forward" not in module.__dict__
            assert "_get_output_for_continuous_inputs" not in module.__dict__
    assert isinstance(model.unet.conv_act, nn.SiLU)
    assert set(model.unet.state_dict()) == state_keys  # fused QKV weights removed again
    assert networks["denoiser_guided"].modulate_fn.__name__ == "modulate"
    with torch.no_grad():
        assert torch.equal(networks["denoiser_guided"](*inputs), before)


def test_unsupported_up_block_modulates_eagerly(model):
    """If one up block cannot take a PendingSkip, the denoisers get the eager modulation instead."""
    model.unet.up_blocks[0].s1 = model.unet.up_blocks[0].s2 = 0.9  # FreeU on: not a block the patch knows
    model.unet.up_blocks[0].b1 = model.unet.up_blocks[0].b2 = 1.1
    networks = model.networks()
    patches = patch_model(model, networks, FastOps.reference())
    assert patches.counts["up_block"] == len(model.unet.up_blocks) - 1
    assert networks["denoiser"].modulate_fn.__name__ == "modulate_ref"


def test_pending_skip_is_not_a_tensor():
    pending = PendingSkip(torch.ones(1, 2, 2, 2), torch.ones(1, 4, 2, 2), torch.ones(1))
    with pytest.raises(TypeError):
        torch.cat([torch.ones(1, 2, 2, 2), pending], dim=1)


@pytest.mark.skipif(not triton_available("cpu") and not torch.cuda.is_available(),
                    reason="needs triton (and TRITON_INTERPRET=1 on the CPU)")
def test_triton_up_path_in_the_model(model, no_tf32):
    """The real modulate and decoder_entry kernels inside the channels-last model (interpreter on the CPU)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    triton_ops, reference = FastOps.triton(), FastOps.reference()
    ops = FastOps("up-path", triton_ops.modulate, triton_ops.decoder_entry, reference.groupnorm_silu,
                  reference.geglu)
    for part in model.modules().values():
        part.to(device)
    networks = model.networks()
    inputs = [t.to(device) for t in denoiser_inputs(model, size=8, seed=2)]
    with torch.no_grad():
        expected = networks["denoiser_guided"](*inputs)
    for part in (model.unet, model.controlnet):
        part.to(memory_format=torch.channels_last)
    patch_model(model, networks, ops)
    with torch.no_grad():
        out = networks["denoiser_guided"](*inputs)
    assert (out - expected).abs().max().item() <= 1e-4 * max(1.0, expected.abs().max().item())

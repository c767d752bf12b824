"""Model folders: bit-exact save and reload, base + adaptor loading, and loading errors that name the file."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel

from spire_rt.errors import ModelLoadError
from spire_rt.models import build_preset, load_model
from spire_rt.models.networks import TextEncoderNet


def assert_same_weights(left, right):
    for name, module in left.modules().items():
        ours, theirs = module.state_dict(), right.modules()[name].state_dict()
        assert ours.keys() == theirs.keys(), name
        assert all(torch.equal(ours[key], theirs[key]) for key in ours), name


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    model = build_preset("tiny")
    folder = model.save(tmp_path_factory.mktemp("models") / "tiny")
    return model, folder


def test_random_preset_saves_and_reloads_bit_exactly(saved_tiny):
    model, folder = saved_tiny
    reloaded = load_model(folder)
    assert_same_weights(model, reloaded)
    assert reloaded.scheduler_config == model.scheduler_config
    text = "Deblur with sigma 1.5; Denoise with sigma 0.06"
    assert reloaded.tokenizer(text).input_ids == model.tokenizer(text).input_ids
    assert not reloaded.trained


def test_same_seed_same_weights_and_other_seed_differs():
    assert_same_weights(build_preset("tiny"), build_preset("tiny"))
    other = build_preset("tiny", seed=1)
    assert not torch.equal(other.unet.conv_in.weight, build_preset("tiny").unet.conv_in.weight)


def test_tiny_wide_fits_what_a_shipped_model_may_take():
    """tiny-wide is sized to ship as spire-tiny: wider where detail passes, its fp16 weights still under 30 MB."""
    wide, tiny = build_preset("tiny-wide"), build_preset("tiny")
    weights = sum(p.numel() for module in wide.modules().values() for p in module.parameters())
    assert weights * 2 <= 30 * 2**20
    assert wide.vae.config.block_out_channels[0] == 2 * tiny.vae.config.block_out_channels[0]
    assert wide.unet.config.block_out_channels[0] == 2 * tiny.unet.config.block_out_channels[0]
    assert wide.unet.config.block_out_channels[-1] == tiny.unet.config.block_out_channels[-1]


def test_base_folder_plus_adaptor_folder(saved_tiny, tmp_path):
    model, folder = saved_tiny
    base = tmp_path / "sd-base"
    shutil.copytree(folder, base)
    shutil.rmtree(base / "controlnet")
    (base / "spire.json").unlink()
    (base / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    adaptor = tmp_path / "adaptor"
    shutil.copytree(folder / "controlnet", adaptor / "controlnet")

    with pytest.raises(ModelLoadError, match="adaptor"):
        load_model(base)
    assert_same_weights(model, load_model(base, adaptor=adaptor))
    assert_same_weights(model, load_model(base, adaptor=adaptor / "controlnet"))


def test_save_refuses_to_overwrite(saved_tiny):
    model, folder = saved_tiny
    with pytest.raises(ModelLoadError, match="already exists"):
        model.save(folder)


def test_unknown_preset_and_missing_folder():
    with pytest.raises(ModelLoadError, match="unknown preset|neither a preset"):
        load_model("sd99")


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "unet" / "diffusion_pytorch_model.safetensors").unlink(), "missing"),
    (lambda f: (f / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 64), "cannot load vae"),
    (lambda f: (f / "text_encoder" / "config.json").write_text("{not json"), "cannot load text_encoder"),
    (lambda f: (f / "scheduler" / "scheduler_config.json").unlink(), "scheduler_config.json: missing"),
    (lambda f: shutil.rmtree(f / "controlnet"), "controlnet"),
])
def test_damaged_folder_is_a_clear_error(saved_tiny, tmp_path, damage, message):
    _, folder = saved_tiny
    copy = tmp_path / "damaged"
    shutil.copytree(folder, copy)
    damage(copy)
    with pytest.raises(ModelLoadError, match=message):
        load_model(copy)


def test_restore_defaults_round_trip_and_unknown_keys_are_refused(saved_tiny, tmp_path):
    from dataclasses import replace

    model, _ = saved_tiny
    folder = replace(model, restore_defaults={"steps": 1, "strength": 0.2}).save(tmp_path / "with_defaults")
    assert load_model(folder).restore_defaults == {"steps": 1, "strength": 0.2}
    info = json.loads((folder / "spire.json").read_text())
    info["restore_defaults"] = {"steps": 1, "sharpness": 3}
    (folder / "spire.json").write_text(json.dumps(info))
    with pytest.raises(ModelLoadError, match="spire.json: restore_defaults has unknown options sharpness"):
        load_model(folder)
    info["restore_defaults"] = {"strength": 2.0}
    (folder / "spire.json").write_text(json.dumps(info))
    with pytest.raises(ModelLoadError, match="spire.json: restore_defaults: strength must be in"):
        load_model(folder)


def test_text_layers_against_truncated_encoder():
    """'penultimate' equals a copy of the encoder with its last layer removed, through the final norm."""
    config = CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                            num_attention_heads=4, max_position_embeddings=16,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(0)
    full = CLIPTextModel(config).eval()
    truncated = CLIPTextModel(CLIPTextConfig(**{**config.to_dict(), "num_hidden_layers": 2})).eval()
    truncated.load_state_dict(full.state_dict(), strict=False)
    ids = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(TextEncoderNet(full, "last")(ids), full(ids).last_hidden_state)
        torch.testing.assert_close(TextEncoderNet(full, "penultimate")(ids), truncated(ids).last_hidden_state)
    with pytest.raises(ValueError, match="text_layer"):
        TextEncoderNet(full, "first")

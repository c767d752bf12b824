"""`spire-rt train --stage unpack`: a shipped model back into a run folder that the recipe's stages carry on."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from spire_rt.cli import main
from spire_rt.errors import SpireError
from spire_rt.models.adaptor import layers_per_level
from spire_rt.models.presets import get_preset
from spire_rt.models.spire_model import SHIPPED_WEIGHTS, build_preset, load_model
from spire_rt.training import recipe
from spire_rt.training.ship import ship_fp16
from spire_rt.training.unpack import unpack_model

SHIPPED = SHIPPED_WEIGHTS / "tiny"
pytestmark = pytest.mark.skipif(not (SHIPPED / "spire.json").is_file(), reason="spire-tiny weights not shipped")


def same_tensors(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    one, other = first.state_dict(), second.state_dict()
    return one.keys() == other.keys() and all(torch.equal(one[k], other[k]) for k in one)


def adaptor_config(run, **options) -> recipe.StageConfig:
    return recipe.StageConfig(stage="adaptor", out=run, steps=2, batch=2, crop=32, lr=1e-4, resume=True, leaves=0,
                              eval_minutes=0, quiet=True, **options)


def test_unpacked_run_holds_the_model_and_carries_it_on(tmp_path):
    run = tmp_path / "run"
    assert unpack_model("tiny", run) == "tiny"
    shipped, unpacked = load_model("tiny"), load_model(run / "model")
    for part in ("controlnet", "unet", "vae", "text_encoder", "fidelity"):
        assert same_tensors(getattr(unpacked, part), getattr(shipped, part)), part
    for part in ("vae", "unet", "text_encoder", "fidelity"):  # the stages' own inputs, fp32
        weights = load_file(next((run / part).glob("*.safetensors")))
        assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}, part
    state = torch.load(run / "adaptor.ckpt", weights_only=False)
    assert state["step"] == 0 and tuple(state["config"]["strength"]) == (0.06, 0.06)

    # Shipped again untrained, it is the model it came from, down to the bit (fp16 -> fp32 -> fp16).
    again = ship_fp16(run / "model", tmp_path / "again", vae=run / "vae")
    assert all(same_tensors(getattr(load_model(again), part), getattr(shipped, part))
               for part in ("controlnet", "unet", "vae", "text_encoder", "fidelity"))

    # A one-step model's run refuses a resume that forgets --strength, and trains with it.
    with pytest.raises(SpireError, match="was trained with --strength"):
        recipe.run_stage(adaptor_config(run), get_preset("tiny"))
    recipe.run_stage(adaptor_config(run, strength=(0.04, 0.08), start_noise=0.0), get_preset("tiny"))
    assert not same_tensors(load_model(run / "model").controlnet, shipped.controlnet)
    assert same_tensors(load_model(run / "model").unet, shipped.unet)
    # The GPU fine-tune chain's leg: the UNet trains too, the adaptor's optimiser state carried on.
    recipe.run_stage(adaptor_config(run, strength=(0.04, 0.08), start_noise=0.0, train_unet=True),
                     get_preset("tiny"))
    assert not same_tensors(load_model(run / "model").unet, shipped.unet)
    # And its decoder leg, the fidelity branch training with the decoder (every pair a landing).
    recipe.run_stage(recipe.StageConfig(stage="decoder", out=run, steps=2, batch=2, crop=32, landing_rate=1.0,
                                        fidelity=True, leaves=0, eval_minutes=0, quiet=True), get_preset("tiny"))


def test_unpack_deepens_the_unet_without_changing_a_restoration(tmp_path, photo_like):
    from spire_rt.backends.torch_backend import TorchBackend
    from spire_rt.pipeline import Restorer

    run = tmp_path / "run"
    unpack_model("tiny", run, deepen_levels=[0])
    deep, shipped = load_model(run / "model"), load_model("tiny")
    layers = layers_per_level(shipped.unet.config)
    deeper = [layers[0] + 1, *layers[1:]]
    assert list(deep.unet.config.layers_per_block) == deeper
    assert json.loads((run / "unet" / "config.json").read_text())["layers_per_block"] == deeper
    options = {"restore": "Denoise with sigma 0.05", "steps": 1, "strength": 0.06, "start_noise": 0.0, "seed": 0,
               "ensemble": 2}
    restored = [np.asarray(Restorer(model, TorchBackend(model))(photo_like, **options), np.float32)
                for model in (deep, shipped)]
    assert np.abs(restored[0] - restored[1]).max() <= 1  # 8-bit rounding of float sums in another order
    # and the adaptor stage trains the new layers with the UNet
    recipe.run_stage(adaptor_config(run, strength=(0.04, 0.08), start_noise=0.0, train_unet=True),
                     get_preset("tiny"))
    trained = load_model(run / "model").unet
    for new_layer in (trained.down_blocks[0].resnets[layers[0]], trained.up_blocks[-1].resnets[1]):
        assert new_layer.conv2.weight.abs().max() > 0  # started at zero


def test_unpack_never_writes_over_a_run(tmp_path):
    run = tmp_path / "run"
    (run / "vae").mkdir(parents=True)
    (run / "vae" / "mine.txt").write_text("kept")
    with pytest.raises(SpireError, match=r"already holds a run \(vae\); unpack into a new folder"):
        unpack_model("tiny", run)
    assert [p.name for p in run.rglob("*")] == ["vae", "mine.txt"]


def test_unpack_refuses_models_the_recipe_cannot_continue(tmp_path):
    renamed = tmp_path / "renamed"
    shutil.copytree(SHIPPED, renamed)
    info = json.loads((renamed / "spire.json").read_text())
    (renamed / "spire.json").write_text(json.dumps({**info, "name": "mine"}))
    with pytest.raises(SpireError, match="model 'mine', which is no training preset"):
        unpack_model(renamed, tmp_path / "a")
    untrained = build_preset("tiny", seed=0).save(tmp_path / "untrained")
    with pytest.raises(SpireError, match="holds untrained weights"):
        unpack_model(untrained, tmp_path / "b")
    with pytest.raises(SpireError, match="preset 'sd15' ships no weights; give a model folder"):
        unpack_model("sd15", tmp_path / "c")
    assert not any((tmp_path / name).exists() for name in "abc")


def test_train_cli_unpacks_and_checks_from(tmp_path, capsys):
    assert main(["train", "--stage", "unpack", "--from", str(SHIPPED), "--out", str(tmp_path / "run")]) == 0
    assert "carry it on with --preset tiny" in capsys.readouterr().out
    assert (tmp_path / "run" / "adaptor.ckpt").is_file()
    assert main(["train", "--stage", "unpack", "--out", str(tmp_path / "none")]) == 2
    assert "--stage unpack needs --from MODEL" in capsys.readouterr().err
    assert main(["train", "--stage", "adaptor", "--from", "tiny", "--out", str(tmp_path / "x"), "--steps", "1"]) == 2
    assert "--from and --deepen-level apply to --stage unpack only" in capsys.readouterr().err
    assert main(["train", "--stage", "unpack", "--from", str(SHIPPED), "--out", str(tmp_path / "y"),
                 "--deepen-level", "1"]) == 2
    assert "level 1 has CrossAttnDownBlock2D / CrossAttnUpBlock2D blocks" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in ("none", "x", "y"))

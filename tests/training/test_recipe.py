"""The recipe runs each stage on a shrunken config on the CPU, its loss falls, and the stages chain."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from spire_rt.degrade import sample_single_params
from spire_rt.models.presets import TINY
from spire_rt.models.spire_model import load_model
from spire_rt.prompts import BLIND_PROMPT
from spire_rt.training import recipe
from spire_rt.training.data import (
    HELD_OUT,
    RGB_ORDERS,
    TRAIN_IMAGES,
    BatchPlan,
    TrainingImages,
    dead_leaves,
    dead_leaves_pool,
    degraded_pairs,
    worker_batches,
)
from spire_rt.training.recipe import StageConfig

SMALL = replace(
    TINY,
    unet={**TINY.unet, "in_channels": 4, "out_channels": 4, "block_out_channels": [8, 16],
          "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
          "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "attention_head_dim": 2,
          "cross_attention_dim": 16, "norm_num_groups": 4},
    vae={**TINY.vae, "block_out_channels": [8, 16], "down_block_types": ["DownEncoderBlock2D"] * 2,
         "up_block_types": ["UpDecoderBlock2D"] * 2, "latent_channels": 4, "norm_num_groups": 4},
    text_encoder={**TINY.text_encoder, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                  "num_attention_heads": 2, "projection_dim": 16},
)


def config(tmp_path, stage, **overrides):
    values = {"stage": stage, "out": tmp_path, "steps": 12, "batch": 4, "crop": 16, "lr": 3e-3, "leaves": 2,
              "warmup": 1, "checkpoint_minutes": 60, "eval_minutes": 0, "log_every": 1, "quiet": True}
    return StageConfig(**{**values, **overrides})


def held_loss(stage, seeds=range(123, 129)):
    """The stage's mean loss over fixed batches, noise and timesteps (no update): one tiny batch is too noisy."""
    losses = []
    for seed in seeds:
        stage.rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        with torch.no_grad():
            losses.append(stage.loss()[0].item())
    return float(np.mean(losses))


def make_stage(cfg, cls):
    cfg = replace(cfg, **{k: v for k, v in recipe.STAGE_DEFAULTS[cfg.stage].items() if getattr(cfg, k) is None})
    return cls(cfg, SMALL, torch.device("cpu"))


def copy_adaptor_inputs(run, folder):
    """What an adaptor stage reads from a run (frozen VAE and UNet, text encoder, image cache), into a fresh folder."""
    import shutil

    for part in ("vae", "unet", "text_encoder", "cache"):
        shutil.copytree(run / part, folder / part)


# The decoder alone moves the loss more slowly than the whole VAE did, so it gets more of these tiny steps.
STAGE_BUDGETS = {"vae": {"steps": 15}, "decoder": {"steps": 30}}


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """The three stages, chained, each for a few steps; returns the folder and each stage's loss before/after."""
    folder = tmp_path_factory.mktemp("run")
    losses = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threading costs more than it gives, and much more on a busy machine
    try:
        for name, cls in (("vae", recipe.VaeStage), ("decoder", recipe.DecoderStage),
                          ("prior", recipe.PriorStage), ("adaptor", recipe.AdaptorStage)):
            stage = make_stage(config(folder, name, **STAGE_BUDGETS.get(name, {})), cls)
            before = held_loss(stage)
            if name == "decoder":
                losses["encoder_before"] = {k: v.clone() for k, v in stage.vae.encoder.state_dict().items()}
                losses["quant_conv_before"] = stage.vae.quant_conv.weight.detach().clone()
                losses["scaling_before"] = stage.vae.config.scaling_factor
            stage.train()
            losses[name] = (before, held_loss(stage))
    finally:
        torch.set_num_threads(threads)
    return folder, losses


@pytest.mark.parametrize("stage", ["vae", "decoder", "prior", "adaptor"])
def test_each_stage_lowers_its_loss(run_folder, stage):
    before, after = run_folder[1][stage]
    assert after < before


def test_decoder_stage_leaves_the_encoder_and_scaling_alone(run_folder):
    from spire_rt.models.spire_model import load_component

    folder, losses = run_folder
    vae = load_component(folder / "vae", "vae")
    for name, tensor in vae.encoder.state_dict().items():
        assert torch.equal(tensor, losses["encoder_before"][name]), name
    assert torch.equal(vae.quant_conv.weight, losses["quant_conv_before"])
    assert vae.config.scaling_factor == losses["scaling_before"]
    assert json.loads((folder / "decoder.jsonl").read_text().splitlines()[-1])["final"]


def test_ship_takes_the_refined_vae_and_refuses_another_encoder(run_folder, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from spire_rt.errors import ModelLoadError
    from spire_rt.training.ship import ship_fp16

    folder = run_folder[0]
    vae = tmp_path / "vae"
    shutil.copytree(folder / "vae", vae)
    weights = vae / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    tensors["decoder.conv_out.bias"] = tensors["decoder.conv_out.bias"] + 0.5  # a "refined" decoder
    save_file(tensors, weights)
    shipped = ship_fp16(folder / "model", tmp_path / "shipped", vae=vae, restore_defaults={"strength": 0.05})
    bias = load_file(shipped / "vae" / "diffusion_pytorch_model.safetensors")["decoder.conv_out.bias"]
    assert bias.dtype == torch.float16 and torch.allclose(bias.float(), tensors["decoder.conv_out.bias"], atol=1e-3)
    assert load_model(shipped).trained and load_model(shipped).restore_defaults == {"strength": 0.05}
    configs = list(shipped.rglob("config.json"))
    assert configs and not [c for c in configs if "_name_or_path" in c.read_text()]  # no training-machine paths
    assert "_name_or_path" in (folder / "model" / "unet" / "config.json").read_text()  # the source had them

    tensors["encoder.conv_in.bias"] = tensors["encoder.conv_in.bias"] + 0.5
    save_file(tensors, weights)
    with pytest.raises(ModelLoadError, match="1 encoder tensors differ"):
        ship_fp16(folder / "model", tmp_path / "refused", vae=vae)
    assert not (tmp_path / "refused").exists()


def test_ship_cli_records_the_chosen_strength_and_ensemble(run_folder, tmp_path, capsys):
    from spire_rt.cli import main

    folder = run_folder[0]
    ship = ["train", "--stage", "ship", "--out", str(folder), "--default-strength", "0.05"]
    assert main([*ship, "--ship-to", str(tmp_path / "shipped"), "--default-ensemble", "2"]) == 0
    assert load_model(tmp_path / "shipped").restore_defaults == {"strength": 0.05, "ensemble": 2}
    assert main([*ship, "--ship-to", str(tmp_path / "refused"), "--default-ensemble", "5"]) == 2
    assert "--default-ensemble must be 1 .. 4, got 5" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize("start_noise", [1.0, 0.0])
def test_one_step_adaptor_learns_from_the_degraded_latent(run_folder, tmp_path, start_noise):
    """--strength LO HI: z_t is E(y) noised to t(s), the loss is on the landed x0, and the model records it."""
    copy_adaptor_inputs(run_folder[0], tmp_path)
    stage = make_stage(config(tmp_path, "adaptor", steps=12, strength=(0.1, 0.3), start_noise=start_noise),
                       recipe.AdaptorStage)
    drawn = stage.one_step_timesteps(4000)
    assert int(drawn.min()) == 99 and int(drawn.max()) == 299  # trailing_timesteps(1, 1000, 0.1 and 0.3)
    before = held_loss(stage)
    stage.train()
    assert held_loss(stage) < before
    model = load_model(tmp_path / "model")
    assert model.restore_defaults == {"steps": 1, "strength": 0.2, "start_noise": start_noise}
    from spire_rt.errors import SpireError

    with pytest.raises(SpireError, match="give --strength again"):  # resuming without it would change the loss
        recipe.run_stage(config(tmp_path, "adaptor", steps=1, resume=True), SMALL)


def test_pixel_loss_scores_the_decoded_landing(run_folder, tmp_path):
    """--loss-space pixel: the one-step error is the frozen decoder's image of the landed latent minus the clean
    crop (checked against diffusers' own AutoencoderKL.decode), and training on it lowers it."""
    copy_adaptor_inputs(run_folder[0], tmp_path)
    stage = make_stage(config(tmp_path, "adaptor", steps=12, strength=(0.1, 0.3), start_noise=0.0,
                              loss_space="pixel"), recipe.AdaptorStage)
    clean = torch.rand(2, 3, 16, 16)
    z0 = stage.latents(clean)
    landed = z0 + 0.3 * torch.randn_like(z0)
    with torch.no_grad():
        error = stage.landing_error(landed, clean, torch.rand(2, 3, 16, 16))
        decoded = stage.vae.decode(landed / stage.vae.config.scaling_factor).sample
    torch.testing.assert_close(error, decoded - (clean * 2 - 1))
    latent_stage = make_stage(config(tmp_path, "adaptor", strength=(0.1, 0.3), start_noise=0.0), recipe.AdaptorStage)
    torch.testing.assert_close(latent_stage.landing_error(landed, clean, clean), landed - z0)
    before = held_loss(stage)
    stage.train()
    assert held_loss(stage) < before


def test_rank_penalty_hinges_the_raised_restoration_against_the_stated_one(run_folder, tmp_path):
    """--rank-rate: the pairs whose prompt states a noise or blur sigma are restored again from the same start with
    it raised; the penalty is rank_hinge of the two decoded outputs' energies over the batch, and its gradient
    reaches the networks through the raised restoration only (the stated one is the fixed side of the order)."""
    from spire_rt.training.ranking import high_frequency_energy, raised_prompt, rank_hinge

    copy_adaptor_inputs(run_folder[0], tmp_path)
    stage = make_stage(config(tmp_path, "adaptor", strength=(0.1, 0.3), start_noise=0.0, rank_rate=1.0),
                       recipe.AdaptorStage)
    with torch.no_grad():  # a fresh adaptor's zero heads would make every restoration ignore its prompt
        for head in [*stage.adaptor.skip_heads, stage.adaptor.mid_head]:
            head.weight.normal_(0, 0.1)
    prompts = [BLIND_PROMPT, "Denoise with sigma 0.10", "Dejpeg with quality 40", "Deblur with sigma 2.0"]
    z_t, y_latent, t = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8), torch.full((4,), 199)
    y = torch.rand(4, 3, 16, 16)
    landed = stage.schedule.predict_x0(z_t, stage.predict(z_t, t, y_latent, prompts), t)
    stage.rng = np.random.default_rng(5)
    penalty, ranked = stage.rank_penalty(z_t, t, y, y_latent, prompts, landed)
    assert ranked == 2 and penalty.item() > 0

    rng = np.random.default_rng(5)  # the stage's draws, replayed: one coin and one raise per rankable prompt
    raised = [raised_prompt(prompts[i], rng) for i in range(4) if rng.random() < 1.0]
    picked = [i for i, r in enumerate(raised) if r is not None]
    assert picked == [1, 3]
    with torch.no_grad():
        index = torch.tensor(picked)
        again = stage.predict(z_t[index], t[index], y_latent[index], [raised[i].text for i in picked])
        raised_landing = stage.schedule.predict_x0(z_t[index], again, t[index])
        images = [(stage.vae.decode(x / stage.vae.config.scaling_factor).sample + 1) / 2
                  for x in (landed[index], raised_landing)]
        sign = torch.tensor([raised[i].sign for i in picked], dtype=torch.float32)
        expected = rank_hinge(*map(high_frequency_energy, images), sign).sum() / 4
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-7)

    landed.retain_grad()
    penalty.backward()
    assert landed.grad is None or not landed.grad.abs().sum()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in stage.adaptor.skip_heads.parameters())
    none, zero = stage.rank_penalty(z_t, t, y, y_latent, [BLIND_PROMPT] * 4, landed.detach())
    assert zero == 0 and none.item() == 0


def test_rank_penalty_padded_to_a_bucket_is_the_same_penalty(run_folder, tmp_path):
    """On CUDA the ranked sub-batch is padded with copies, left out of the sum, to a multiple of rank_bucket, so cuDNN's
    benchmark mode meets a few shapes instead of a new one each step: the padding changes the shapes the networks
    see and nothing else (the penalty, its gradient, the count of ranked pairs, the coins drawn)."""
    copy_adaptor_inputs(run_folder[0], tmp_path)
    stage = make_stage(config(tmp_path, "adaptor", strength=(0.1, 0.3), start_noise=0.0, rank_rate=1.0),
                       recipe.AdaptorStage)
    assert stage.rank_bucket == 1  # on the CPU no convolution is tuned per shape: nothing is padded
    with torch.no_grad():
        for head in [*stage.adaptor.skip_heads, stage.adaptor.mid_head]:
            head.weight.normal_(0, 0.1)
    prompts = [BLIND_PROMPT, "Denoise with sigma 0.10", "Dejpeg with quality 40", "Deblur with sigma 2.0",
               "Deblur with sigma 1.5; Denoise with sigma 0.06"]
    z_t, y_latent, t = torch.randn(5, 4, 8, 8), torch.randn(5, 4, 8, 8), torch.full((5,), 199)
    y = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        landed = stage.schedule.predict_x0(z_t, stage.predict(z_t, t, y_latent, prompts), t)
    predict, sizes = stage.predict, []
    stage.predict = lambda z, *rest: sizes.append(z.shape[0]) or predict(z, *rest)

    results = []
    for bucket in (1, 8):
        stage.rank_bucket, stage.rng = bucket, np.random.default_rng(5)
        stage.adaptor.zero_grad()
        penalty, ranked = stage.rank_penalty(z_t, t, y, y_latent, prompts, landed)
        penalty.backward()
        grads = torch.cat([p.grad.flatten() for p in stage.adaptor.skip_heads.parameters()])
        results.append((penalty.item(), ranked, grads, stage.rng.random()))
    (plain, plain_ranked, plain_grads, plain_next), (padded, padded_ranked, padded_grads, padded_next) = results
    assert sizes == [3, 8]
    assert plain_ranked == padded_ranked == 3 and plain_next == padded_next
    assert plain > 0 and padded == pytest.approx(plain, rel=1e-5)
    assert torch.allclose(padded_grads, plain_grads, rtol=1e-4, atol=1e-9) and plain_grads.abs().sum() > 0


def test_adaptor_trains_with_the_rank_objective(run_folder, tmp_path):
    copy_adaptor_inputs(run_folder[0], tmp_path)
    stage = make_stage(config(tmp_path, "adaptor", steps=12, strength=(0.1, 0.3), start_noise=0.0,
                              loss_space="pixel", rank_rate=0.5), recipe.AdaptorStage)
    restoring = replace(stage.config, rank_rate=0.0)  # the restoration loss alone, without the coin-drawn penalty
    trained, stage.config = stage.config, restoring
    before = held_loss(stage)
    stage.config = trained
    stage.train()
    stage.config = restoring
    assert held_loss(stage) < before
    records = [json.loads(line) for line in (tmp_path / "adaptor.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert steps and all(r["rank_penalty"] >= 0 and 0 <= r["ranked"] <= 4 for r in steps)
    assert any(r["ranked"] > 0 for r in steps)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"rank_rate": 0.5}, "--rank-rate applies to the adaptor stage with --strength"),
    ({"rank_rate": 1.5, "strength": (0.1, 0.2)}, r"--rank-rate must be in \[0, 1\]"),
    ({"rank_rate": -0.5, "strength": (0.1, 0.2)}, r"--rank-rate must be in \[0, 1\]"),
])
def test_bad_rank_rate_is_refused(tmp_path, overrides, message):
    from spire_rt.errors import SpireError

    with pytest.raises(SpireError, match=message):
        recipe.run_stage(config(tmp_path, "adaptor", **overrides), SMALL)
    with pytest.raises(SpireError, match="--rank-rate applies to the adaptor stage"):
        recipe.run_stage(config(tmp_path, "decoder", rank_rate=0.5), SMALL)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"loss_space": "pixels", "strength": (0.1, 0.2)}, "--loss-space must be one of latent, pixel"),
    ({"loss_space": "pixel"}, "--loss-space pixel needs --strength"),
])
def test_bad_loss_space_is_refused(tmp_path, overrides, message):
    from spire_rt.errors import SpireError

    with pytest.raises(SpireError, match=message):
        recipe.run_stage(config(tmp_path, "adaptor", **overrides), SMALL)


@pytest.mark.parametrize(("stage", "strength", "message"), [
    ("vae", (0.1, 0.3), "adaptor stage only"),
    ("adaptor", (0.3, 0.1), "0 < LO <= HI < 1"),
    ("adaptor", (0.0, 0.5), "0 < LO <= HI < 1"),
    ("adaptor", (0.5, 1.0), "0 < LO <= HI < 1"),  # strength 1 is a pure-noise start in the runtime
    ("adaptor", (0.0001, 0.2), "below the first timestep"),
])
def test_bad_strength_is_refused(tmp_path, stage, strength, message):
    from spire_rt.errors import SpireError

    with pytest.raises(SpireError, match=message):
        recipe.run_stage(config(tmp_path, stage, strength=strength), SMALL)
    with pytest.raises(SpireError, match="--start-noise"):
        recipe.run_stage(config(tmp_path, "adaptor", strength=(0.1, 0.2), start_noise=-1.0), SMALL)
    with pytest.raises(SpireError, match="--start-noise needs --strength"):
        recipe.run_stage(config(tmp_path, "adaptor", start_noise=0.0), SMALL)


def test_stages_write_folders_logs_and_checkpoints(run_folder):
    folder = run_folder[0]
    for stage in ("vae", "prior", "adaptor"):
        assert (folder / f"{stage}.ckpt").is_file()
        records = [json.loads(line) for line in (folder / f"{stage}.jsonl").read_text().splitlines()]
        assert records[-1]["final"] and records[-1]["step"] > 0
    assert (folder / "vae" / "config.json").is_file() and (folder / "unet" / "config.json").is_file()
    model = load_model(folder / "model")
    assert model.trained and model.unet.config.block_out_channels == [8, 16]
    assert model.vae.config.scaling_factor != 1.0  # set from the latents' spread


def test_resume_carries_on_from_the_checkpoint(run_folder):
    folder = run_folder[0]
    steps = json.loads((folder / "vae.jsonl").read_text().splitlines()[-1])["step"]
    record = recipe.run_stage(config(folder, "vae", steps=2, resume=True), SMALL)
    assert record["step"] == steps + 2


def test_a_rerun_keeps_the_earlier_checkpoint_unless_told(tmp_path, capsys):
    """A stage whose RUN/<stage>.ckpt exists runs only with --resume or --fresh. The refusal writes nothing; --fresh
    starts again and keeps the earlier checkpoint and log, byte for byte, under a dated name."""
    from spire_rt.cli import main
    from spire_rt.errors import SpireError

    recipe.run_stage(config(tmp_path, "vae", steps=1), SMALL)
    earlier = {path: path.read_bytes() for path in (tmp_path / "vae.ckpt", tmp_path / "vae.jsonl")}
    files = sorted(tmp_path.rglob("*"))
    with pytest.raises(SpireError, match="holds an earlier run of the vae stage: give --resume .* or --fresh"):
        recipe.run_stage(config(tmp_path, "vae", steps=1), SMALL)
    code = main(["train", "--stage", "vae", "--out", str(tmp_path), "--steps", "1", "--fresh", "--resume"])
    assert code == 2 and "give one" in capsys.readouterr().err
    assert sorted(tmp_path.rglob("*")) == files
    assert all(path.read_bytes() == content for path, content in earlier.items())

    record = recipe.run_stage(config(tmp_path, "vae", steps=2, fresh=True), SMALL)
    assert record["step"] == 2  # started again, not carried on
    for path, content in earlier.items():
        (kept,) = tmp_path.glob(f"vae.2*{path.suffix}")
        assert kept.read_bytes() == content
    assert json.loads((tmp_path / "vae.jsonl").read_text().splitlines()[0])["step"] == 1


def test_stage_needs_a_budget(tmp_path):
    from spire_rt.errors import SpireError

    with pytest.raises(SpireError, match="--steps or --minutes"):
        recipe.run_stage(config(tmp_path, "vae", steps=None), SMALL)


def test_data_holds_out_the_evaluation_images():
    assert not set(HELD_OUT) & set(TRAIN_IMAGES)
    assert "chelsea" in HELD_OUT


def test_crops_and_pairs_have_the_right_shapes():
    rng = np.random.default_rng(0)
    leaves = np.stack([dead_leaves(rng, 64, max_discs=2000)])
    images = TrainingImages.load(leaves=0)
    images.leaves = leaves
    clean = images.crops(rng, 6, 32)
    assert clean.shape == (6, 3, 32, 32) and 0 <= clean.min() and clean.max() <= 1
    y, prompts = degraded_pairs(clean, rng, blind_rate=0.5)
    assert y.shape == clean.shape and len(prompts) == 6
    assert all(isinstance(p, str) and p for p in prompts)


def test_single_rate_mixes_in_one_operation_pairs():
    clean = torch.rand(40, 3, 24, 24)
    _, two_stage = degraded_pairs(clean, np.random.default_rng(1), blind_rate=0.0)
    _, single = degraded_pairs(clean, np.random.default_rng(1), blind_rate=0.0, single_rate=1.0)
    clauses = [prompt.count(";") + 1 for prompt in single if prompt != BLIND_PROMPT]
    assert clauses and max(clauses) == 1  # one stated operation (a tiny downscale may state none)
    assert max(prompt.count(";") + 1 for prompt in two_stage) > 1
    _, unmixed = degraded_pairs(clean, np.random.default_rng(1), blind_rate=0.0, single_rate=0.0)
    assert unmixed == two_stage  # rate 0 draws exactly what the recipe drew before the option existed
    _, half = degraded_pairs(clean, np.random.default_rng(2), blind_rate=0.0, single_rate=0.5)
    assert 8 <= sum(";" in prompt for prompt in half) <= 32  # some pairs mixed, some not


def test_single_weights_set_how_often_each_operation_is_drawn():
    rng = np.random.default_rng(4)
    drawn = [sample_single_params(rng, (64, 64), weights=(1, 1, 1, 3)).stages[0] for _ in range(800)]
    jpeg = sum(stage.jpeg_quality is not None for stage in drawn)
    assert 340 <= jpeg <= 460  # half of them; equal weights would give a quarter
    assert all(sum(value is not None for value in (s.blur_sigma, s.downscale, s.noise_sigma, s.jpeg_quality)) == 1
               for s in drawn)
    only_noise = [sample_single_params(rng, (64, 64), weights=(0, 0, 2, 0)).stages[0] for _ in range(20)]
    assert all(stage.noise_sigma is not None for stage in only_noise)
    # Without weights the stream is the one the recipe drew before the option existed.
    before = [sample_single_params(np.random.default_rng(5), (64, 64)) for _ in range(3)]
    assert [sample_single_params(np.random.default_rng(5), (64, 64), weights=None) for _ in range(3)] == before
    clean = torch.rand(12, 3, 24, 24)
    _, prompts = degraded_pairs(clean, np.random.default_rng(6), blind_rate=0.0, single_rate=1.0,
                                single_weights=(0, 0, 0, 1))
    assert all(prompt.startswith("Dejpeg with quality") for prompt in prompts)


@pytest.mark.parametrize(("rate", "weights", "message"), [
    (0.0, (1, 1, 1, 3), "--single-weights needs --single-rate"),
    (0.5, (1, -1, 1, 1), "none negative"),
    (0.5, (0, 0, 0, 0), "not all zero"),
    (0.5, (1, 1, float("nan"), 1), "single-operation weights must be 4 numbers"),
])
def test_bad_single_weights_are_refused(tmp_path, rate, weights, message):
    from spire_rt.errors import SpireError

    with pytest.raises(SpireError, match=message):
        recipe.run_stage(config(tmp_path, "adaptor", single_rate=rate, single_weights=weights), SMALL)
    assert not any(tmp_path.iterdir())  # refused before anything is written


def test_train_cli_passes_single_weights_on(tmp_path, capsys):
    from spire_rt.cli import main

    out = tmp_path / "cli"
    code = main(["train", "--stage", "adaptor", "--out", str(out), "--steps", "1", "--single-rate", "0.5",
                 "--single-weights", "1", "1", "-1", "3"])
    assert code != 0 and "--single-weights: single-operation weights" in capsys.readouterr().err
    assert not out.exists()


def test_blind_rate_sets_the_share_of_blind_prompts(tmp_path, capsys):
    """--blind-rate: 0 keeps every pair's own prompt, 1 makes every prompt the blind one, and the default draws
    the same stream as before the option; out-of-range or misplaced rates are refused, from the CLI too."""
    from spire_rt.cli import main
    from spire_rt.errors import SpireError

    images = TrainingImages.load(leaves=2, seed=0, cache=tmp_path / "cache")

    def prompts(**rates):
        return BatchPlan(batch=8, crop=16, degraded=8, **rates).draw(images, np.random.default_rng(3))[2]

    assert BLIND_PROMPT not in prompts(blind_rate=0.0)
    assert prompts(blind_rate=1.0) == [BLIND_PROMPT] * 8
    rng = np.random.default_rng(3)  # the default draws what degraded_pairs' own default (BLIND_RATE) draws
    assert prompts() == degraded_pairs(images.crops(rng, 8, 16), rng)[1]
    with pytest.raises(SpireError, match=r"--blind-rate must be in \[0, 1\], got 1.5"):
        recipe.run_stage(config(tmp_path / "run", "adaptor", blind_rate=1.5), SMALL)
    code = main(["train", "--stage", "vae", "--out", str(tmp_path / "cli"), "--steps", "1", "--blind-rate", "0.5"])
    assert code == 2 and "--blind-rate applies to the adaptor stage" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists() and not (tmp_path / "run").exists()


def test_rgb_permute_reorders_the_channels_of_that_share_of_crops():
    rng = np.random.default_rng(3)
    photo = rng.random((40, 40, 3)).astype(np.float32)  # every channel differs from the others
    no_leaves = np.zeros((0, 1, 1, 3))
    plain, permuted = TrainingImages([photo], no_leaves), TrainingImages([photo], no_leaves, rgb_permute=1.0)
    orders = set()
    for seed in range(40):
        before = plain.crop(np.random.default_rng(seed), 16)
        after = permuted.crop(np.random.default_rng(seed), 16)  # the same crop: its order is drawn last
        order = next(o for o in RGB_ORDERS if np.array_equal(after, before[..., o]))
        orders.add(tuple(order))
    assert len(RGB_ORDERS) == 5 and (0, 1, 2) not in orders and len(orders) == 5
    # Rate 0 draws exactly what the recipe drew before the option existed; a middle rate permutes some crops.
    unmoved = TrainingImages([photo], no_leaves, rgb_permute=0.0)
    assert np.array_equal(unmoved.crop(np.random.default_rng(9), 16), plain.crop(np.random.default_rng(9), 16))
    half = TrainingImages([photo], no_leaves, rgb_permute=0.5)
    same = sum(np.array_equal(half.crop(np.random.default_rng(s), 16), plain.crop(np.random.default_rng(s), 16))
               for s in range(40))
    assert 8 <= same <= 32


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_bad_rgb_permute_is_refused(tmp_path, rate):
    from spire_rt.errors import SpireError

    with pytest.raises(SpireError, match=r"--rgb-permute must be in \[0, 1\]"):
        recipe.run_stage(config(tmp_path, "vae", rgb_permute=rate), SMALL)
    with pytest.raises(ValueError, match=r"rgb_permute must be in \[0, 1\]"):
        TrainingImages([], np.zeros((0, 1, 1, 3)), rgb_permute=rate)


def test_train_cli_passes_rgb_permute_on(tmp_path, capsys):
    from spire_rt.cli import main

    code = main(["train", "--stage", "vae", "--out", str(tmp_path / "cli"), "--steps", "1", "--rgb-permute", "2"])
    assert code != 0 and "--rgb-permute must be in [0, 1], got 2.0" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()


@pytest.mark.parametrize(("stage", "rate", "message"), [
    ("adaptor", 1.5, r"--single-rate must be in \[0, 1\]"),
    ("adaptor", -0.1, r"--single-rate must be in \[0, 1\]"),
    ("vae", 0.5, "applies to the adaptor stage"),
    ("decoder", 0.5, "applies to the adaptor stage"),  # the decoder draws pairs only with --landing-rate
])
def test_bad_single_rate_is_refused(tmp_path, stage, rate, message):
    from spire_rt.errors import SpireError

    with pytest.raises(SpireError, match=message):
        recipe.run_stage(config(tmp_path, stage, single_rate=rate), SMALL)


def test_dead_leaves_pool_is_the_same_from_any_number_of_processes(tmp_path):
    one = dead_leaves_pool(3, seed=5, size=32)
    made_by_three = dead_leaves_pool(3, seed=5, size=32, cache=tmp_path, processes=3)
    np.testing.assert_array_equal(made_by_three, one)
    assert not np.array_equal(one[0], one[1])
    assert (tmp_path / "dead_leaves_v2_3_5_32.npy").is_file()
    np.testing.assert_array_equal(dead_leaves_pool(3, seed=5, size=32, cache=tmp_path), one)  # from the cache


def test_worker_batches_follow_the_plan_and_their_seed():
    images = TrainingImages.load(leaves=0)
    plan = BatchPlan(batch=5, crop=24, degraded=3, single_rate=0.5)
    first = worker_batches(images, plan, seed=(0, 0), workers=2)
    batches = [next(first) for _ in range(4)]
    for clean, y, prompts in batches:
        assert clean.shape == (5, 3, 24, 24) and y.shape == (3, 3, 24, 24) and len(prompts) == 3
        assert not torch.equal(y, clean[:3])  # degraded
    assert not torch.equal(batches[0][0], batches[1][0])  # each worker draws its own stream
    assert torch.equal(next(worker_batches(images, plan, seed=(0, 0), workers=2))[0], batches[0][0])
    assert not torch.equal(next(worker_batches(images, plan, seed=(0, 7), workers=2))[0], batches[0][0])
    clean, y, prompts = BatchPlan(batch=2, crop=16).draw(images, np.random.default_rng(0))
    assert clean.shape == (2, 3, 16, 16) and y.shape[0] == 0 and prompts == []


def test_a_stage_trains_from_worker_batches(run_folder, tmp_path):
    """--workers N: the one-step adaptor learns from batches drawn by worker processes, as it does from its own."""
    copy_adaptor_inputs(run_folder[0], tmp_path)
    stage = make_stage(config(tmp_path, "adaptor", steps=12, strength=(0.1, 0.3), start_noise=0.0, workers=2),
                       recipe.AdaptorStage)
    before = held_loss(stage)  # held batches come from stage.rng: the stream starts only when training does
    stage.train()
    stage.stream = None
    assert held_loss(stage) < before
    records = [json.loads(line) for line in (tmp_path / "adaptor.jsonl").read_text().splitlines()]
    assert records[-1]["final"] and records[-1]["step"] == 12


def test_negative_workers_are_refused(tmp_path):
    from spire_rt.errors import SpireError

    with pytest.raises(SpireError, match="--workers must be 0 or more"):
        recipe.run_stage(config(tmp_path, "vae", workers=-1), SMALL)


def copy_decoder_inputs(run, folder):
    """What a decoder stage with --landing-rate reads from a run: the adaptor's model, its VAE as RUN/vae (other
    tests resume the shared run's vae stage), the image cache."""
    import shutil

    for part in ("model", "cache"):
        shutil.copytree(run / part, folder / part)
    shutil.copytree(run / "model" / "vae", folder / "vae")


def test_landings_are_what_the_pipeline_decodes(run_folder):
    """Landings runs the pipeline's phases 2-4 at the model's restore_defaults: decoding its latent gives the
    image the Restorer returns (no colour fix), to 8-bit rounding."""
    from spire_rt.backends.torch_backend import TorchBackend
    from spire_rt.models.networks import VaeDecoderNet
    from spire_rt.pipeline import Restorer

    model = load_model(run_folder[0] / "model")
    model.restore_defaults = {"steps": 2, "strength": 0.5, "start_noise": 0.5}
    landings = recipe.Landings(model, torch.device("cpu"))
    restorer = Restorer(model, TorchBackend(model))
    image = np.random.default_rng(0).random((16, 16, 3)).astype(np.float32)
    for seed, prompt in ((3, "Denoise with sigma 0.10"), (4, BLIND_PROMPT)):
        y = torch.from_numpy(image).permute(2, 0, 1)[None]
        with torch.no_grad():
            latent = landings(y, [prompt], torch.Generator().manual_seed(seed))
            decoded = ((VaeDecoderNet(model.vae)(latent) + 1) / 2).clamp(0, 1)[0].permute(1, 2, 0).numpy()
        restored = np.asarray(restorer(image, restore=prompt, seed=seed, color_fix="none"), np.float32) / 255
        assert np.abs(restored - decoded).max() <= 0.5 / 255 + 1e-4


def test_decoder_stage_learns_from_landings(run_folder, tmp_path):
    """--landing-rate: part of each batch is the model's restorations, the loss falls, the encoder stays."""
    copy_decoder_inputs(run_folder[0], tmp_path)
    stage = make_stage(config(tmp_path, "decoder", steps=80, lr=1e-3, landing_rate=0.75, single_rate=0.5),
                       recipe.DecoderStage)
    encoder = {k: v.clone() for k, v in stage.vae.encoder.state_dict().items()}
    before = held_loss(stage)
    stage.train()
    assert held_loss(stage) < before
    records = [json.loads(line) for line in (tmp_path / "decoder.jsonl").read_text().splitlines()]
    assert all(record["landed_mse"] > 0 for record in records if "loss" in record)
    saved = load_model(tmp_path / "model").vae  # the model is untouched; RUN/vae holds the new decoder
    from spire_rt.models.spire_model import load_component

    vae = load_component(tmp_path / "vae", "vae")
    for name, tensor in vae.encoder.state_dict().items():
        assert torch.equal(tensor, encoder[name]) and torch.equal(tensor, saved.encoder.state_dict()[name]), name
    assert not torch.equal(vae.decoder.conv_out.weight, saved.decoder.conv_out.weight)
    few = make_stage(config(tmp_path, "decoder", landing_rate=0.1), recipe.DecoderStage)  # 0.1 of 4: none landed
    loss, metrics = few.loss()
    assert torch.isfinite(loss) and "landed_mse" not in metrics


def test_landings_refuse_a_vae_the_model_was_not_trained_with(run_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    from spire_rt.errors import ModelLoadError

    copy_decoder_inputs(run_folder[0], tmp_path)
    weights = tmp_path / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    tensors["encoder.conv_in.bias"] = tensors["encoder.conv_in.bias"] + 0.5
    save_file(tensors, weights)
    with pytest.raises(ModelLoadError, match="not the VAE the model was trained with"):
        recipe.run_stage(config(tmp_path, "decoder", landing_rate=0.5), SMALL)


@pytest.mark.parametrize(("stage", "rate", "message"), [
    ("adaptor", 0.5, "decoder stage only"),
    ("decoder", 1.5, r"--landing-rate must be in \[0, 1\]"),
    ("decoder", 0.5, "no adaptor model at"),  # the fresh folder has no RUN/model to restore with
])
def test_bad_landing_rate_is_refused(run_folder, tmp_path, stage, rate, message):
    import shutil

    from spire_rt.errors import SpireError

    shutil.copytree(run_folder[0] / "vae", tmp_path / "vae")
    with pytest.raises(SpireError, match=message):
        recipe.run_stage(config(tmp_path, stage, landing_rate=rate), SMALL)


def test_decoder_stage_trains_a_fidelity_branch(run_folder, tmp_path):
    """--fidelity: a fresh branch (so the first step decodes as the decoder alone did) learns with the decoder from
    landings and each pair's degraded image; RUN/fidelity holds it, a resume keeps it (frozen without the option),
    and the adaptor stage's pixel loss then decodes through it, as the runtime does."""
    from spire_rt.models.networks import VaeDecoderNet
    from spire_rt.models.spire_model import load_component

    copy_decoder_inputs(run_folder[0], tmp_path)
    stage = make_stage(config(tmp_path, "decoder", steps=60, lr=1e-3, landing_rate=1.0, single_rate=0.5,
                              fidelity=True), recipe.DecoderStage)
    assert not any(head.weight.abs().sum() for head in stage.fidelity.heads)
    before = held_loss(stage)
    stage.train()
    assert held_loss(stage) < before
    branch = load_component(tmp_path / "fidelity", "fidelity")
    assert all(head.weight.abs().sum() > 0 for head in branch.heads)
    assert len(stage.optimizer.param_groups) == 2  # decoder, then branch: a resume carries each group's state

    frozen = make_stage(config(tmp_path, "decoder", steps=3, landing_rate=1.0, resume=True), recipe.DecoderStage)
    assert frozen.fidelity is not None and not any(p.requires_grad for p in frozen.fidelity.parameters())
    for name, tensor in branch.state_dict().items():
        assert torch.equal(frozen.fidelity.state_dict()[name], tensor), name
    frozen.train()
    for name, tensor in load_component(tmp_path / "fidelity", "fidelity").state_dict().items():
        assert torch.equal(branch.state_dict()[name], tensor), name

    copy_adaptor_inputs(run_folder[0], tmp_path / "adaptor_run")
    import shutil

    shutil.copytree(tmp_path / "vae", tmp_path / "adaptor_run" / "vae", dirs_exist_ok=True)
    shutil.copytree(tmp_path / "fidelity", tmp_path / "adaptor_run" / "fidelity")
    adaptor = make_stage(config(tmp_path / "adaptor_run", "adaptor", strength=(0.1, 0.3), start_noise=0.0,
                                loss_space="pixel"), recipe.AdaptorStage)
    clean, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    landed = adaptor.latents(clean)
    with torch.no_grad():
        error = adaptor.landing_error(landed, clean, y)
        expected = VaeDecoderNet(adaptor.vae, branch)(landed, y * 2 - 1) - (clean * 2 - 1)
        plain = VaeDecoderNet(adaptor.vae)(landed) - (clean * 2 - 1)
    torch.testing.assert_close(error, expected)
    assert (error - plain).abs().max() > 1e-4
    assert adaptor.model().fidelity is adaptor.fidelity

    from spire_rt.cli import main
    from spire_rt.training.unpack import unpack_model

    assert main(["train", "--stage", "ship", "--out", str(tmp_path), "--ship-to", str(tmp_path / "shipped")]) == 0
    from safetensors.torch import load_file

    assert load_model(tmp_path / "shipped").fidelity is not None
    stored = load_file(tmp_path / "shipped" / "fidelity" / "diffusion_pytorch_model.safetensors")
    assert {tensor.dtype for tensor in stored.values()} == {torch.float16}
    unpack_model(tmp_path / "shipped", tmp_path / "unpacked")
    for name, tensor in load_component(tmp_path / "unpacked" / "fidelity", "fidelity").state_dict().items():
        assert tensor.dtype == torch.float32 and torch.allclose(tensor, branch.state_dict()[name], atol=1e-3), name


@pytest.mark.parametrize(("overrides", "message"), [
    ({"stage": "adaptor", "fidelity": True}, "decoder stage only"),
    ({"stage": "decoder", "fidelity": True, "landing_rate": 0.8}, "needs --landing-rate 1"),
])
def test_bad_fidelity_options_are_refused(tmp_path, overrides, message):
    from spire_rt.errors import SpireError

    with pytest.raises(SpireError, match=message):
        recipe.run_stage(config(tmp_path, **overrides), SMALL)


def test_a_run_with_a_branch_refuses_clean_pairs(run_folder, tmp_path):
    """Once RUN/fidelity exists, a decoder leg that would hand the branch clean crops as their own degraded
    images is refused, with or without --fidelity."""
    from spire_rt.errors import SpireError
    from spire_rt.models.fidelity import FidelityBranch
    from spire_rt.models.spire_model import load_component

    copy_decoder_inputs(run_folder[0], tmp_path)
    FidelityBranch.for_vae(load_component(tmp_path / "vae", "vae")).save_pretrained(tmp_path / "fidelity")
    with pytest.raises(SpireError, match="needs --landing-rate 1"):
        recipe.run_stage(config(tmp_path, "decoder", landing_rate=0.5), SMALL)


def test_cosine_lr_warms_up_and_decays():
    assert recipe.cosine_lr(1.0, 0.0, 0, warmup=10) == pytest.approx(0.1)
    assert recipe.cosine_lr(1.0, 0.0, 100, warmup=10) == pytest.approx(1.0)
    assert recipe.cosine_lr(1.0, 1.0, 100, warmup=10) == pytest.approx(0.1)


# --- --precision bf16 -----------------------------------------------------------------------------------------

BF16_STAGES = {
    "vae": ({}, recipe.VaeStage),
    "decoder": ({"landing_rate": 0.5, "single_rate": 0.5}, recipe.DecoderStage),
    "prior": ({}, recipe.PriorStage),
    "adaptor": ({"strength": (0.1, 0.3), "start_noise": 0.0, "loss_space": "pixel", "rank_rate": 1.0},
                recipe.AdaptorStage),
}


def copy_stage_inputs(run, folder):
    """What any stage reads from the chained run: the decoder stage's inputs (whose VAE is the adaptor model's,
    which the prior and adaptor stages may read as well) and the UNet and text encoder."""
    import shutil

    copy_decoder_inputs(run, folder)
    for part in ("unet", "text_encoder"):
        shutil.copytree(run / part, folder / part)


def stage_in(folder, name, **overrides):
    """A stage of `name` on the inputs copy_stage_inputs put in `folder`."""
    extra, cls = BF16_STAGES[name]
    return make_stage(config(folder, name, **{**extra, **overrides}), cls)


def loss_at(stage, seed=7):
    """The stage's loss on a fixed draw, under its own precision (as its training loop computes it)."""
    stage.rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    with torch.no_grad(), stage.autocast():
        return stage.loss()[0]


@pytest.mark.parametrize("name", list(BF16_STAGES))
def test_bf16_loss_is_the_fp32_loss_to_bfloat16_accuracy(run_folder, tmp_path, name):
    """Under --precision bf16 each stage's loss, on the same draw, comes out in fp32 and within bfloat16's
    accuracy of the fp32 loss; it differs from it, so the autocast is really on."""
    copy_stage_inputs(run_folder[0], tmp_path)
    fp32 = stage_in(tmp_path, name)
    bf16 = stage_in(tmp_path, name, precision="bf16")
    if name == "adaptor":  # fresh zero heads would make the rank pass restore exactly as the truthful one
        with torch.no_grad():
            for head in [*fp32.adaptor.skip_heads, fp32.adaptor.mid_head]:
                head.weight.normal_(0, 0.1)
        bf16.adaptor.load_state_dict(fp32.adaptor.state_dict())
    reference, mixed = loss_at(fp32), loss_at(bf16)
    assert mixed.dtype == torch.float32
    assert mixed.item() != reference.item()
    assert mixed.item() == pytest.approx(reference.item(), rel=0.03, abs=0.01)


@pytest.mark.parametrize("name", ["decoder", "adaptor"])
def test_stages_draw_their_pairs_by_the_single_weights(run_folder, tmp_path, name):
    """Both stages that draw degraded pairs hand --single-rate and --single-weights to their batches."""
    copy_stage_inputs(run_folder[0], tmp_path)
    stage = stage_in(tmp_path, name, single_rate=1.0, single_weights=(0.0, 0.0, 0.0, 1.0))
    assert stage.batch_plan().single_weights == (0.0, 0.0, 0.0, 1.0)
    _, y, prompts = stage.next_batch()
    stated = [prompt for prompt in prompts if prompt != BLIND_PROMPT]
    assert len(y) == len(prompts) and stated
    assert all(prompt.startswith("Dejpeg with quality") for prompt in stated)


def test_bf16_training_keeps_fp32_weights_and_lowers_the_loss(run_folder, tmp_path):
    copy_stage_inputs(run_folder[0], tmp_path)
    stage = stage_in(tmp_path, "adaptor", steps=12, precision="bf16")
    restoring = replace(stage.config, rank_rate=0.0, precision="fp32")  # scored in fp32, without the coin draws
    trained, stage.config = stage.config, restoring
    before = held_loss(stage)
    stage.config = trained
    seen = set()  # what the adaptor's first convolution computes in, inside the training loop
    hook = stage.adaptor.conv_in.register_forward_hook(lambda module, inputs, output: seen.add(output.dtype))
    stage.train()
    hook.remove()
    assert seen == {torch.bfloat16}
    stage.config = restoring
    assert held_loss(stage) < before
    assert all(p.dtype == torch.float32 for p in stage.parameters())
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in stage.parameters())
    saved = torch.load(tmp_path / "adaptor.ckpt", map_location="cpu", weights_only=False)
    assert saved["config"]["precision"] == "bf16"
    assert all(t.dtype == torch.float32 for t in saved["modules"]["adaptor"].values() if t.is_floating_point())


@pytest.mark.parametrize(("device", "native", "warned"),
                         [("cpu", False, True), ("cpu", True, False), ("cuda", False, False)])
def test_train_cli_warns_of_bf16_on_a_cpu_that_emulates_it(tmp_path, capsys, monkeypatch, device, native, warned):
    """bf16 autocast on a CPU without bfloat16 instructions is emulated (an AVX2-only EPYC took 37 s an adaptor
    step, against 2 s in fp32): the CLI says so before a stage starts, and only then. The stage here is refused
    right after (a misplaced --blind-rate), so nothing trains."""
    from spire_rt.cli import main
    from spire_rt.training import cli

    monkeypatch.setattr(cli, "cpu_has_bfloat16", lambda: native)
    out = tmp_path / "cli"
    code = main(["train", "--stage", "vae", "--out", str(out), "--steps", "1", "--blind-rate", "0.5",
                 "--precision", "bf16", "--device", device])
    err = capsys.readouterr().err
    assert code == 2 and "--blind-rate applies to the adaptor stage" in err
    assert ("warning: --precision bf16 on a CPU without bfloat16 instructions" in err) == warned
    assert not out.exists()


@pytest.mark.parametrize(("device", "message"), [("garbage", "unknown device 'garbage'"),
                                                 ("mps", "device 'mps' is not supported")])
def test_train_cli_refuses_an_unknown_device(tmp_path, capsys, device, message):
    """The recipe resolves --device as the backends do: a clear error, exit status 2, nothing written."""
    from spire_rt.cli import main

    out = tmp_path / "cli"
    assert main(["train", "--stage", "vae", "--out", str(out), "--steps", "1", "--device", device]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_landings_stay_fp32_under_a_bf16_stage(run_folder):
    """The decoder stage's landings are what the runtime decodes, so a bf16 stage's autocast must not reach them."""
    landings = recipe.Landings(load_model(run_folder[0] / "model"), torch.device("cpu"))
    y = torch.rand(2, 3, 16, 16)
    prompts = ["Denoise with sigma 0.10", BLIND_PROMPT]
    plain = landings(y, prompts, torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = landings(y, prompts, torch.Generator().manual_seed(1))
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, plain, rtol=0, atol=0)


def test_bad_precision_is_refused(tmp_path, capsys):
    from spire_rt.cli import main
    from spire_rt.errors import SpireError

    with pytest.raises(SpireError, match="--precision must be one of fp32, bf16, got 'fp16'"):
        recipe.run_stage(config(tmp_path / "run", "vae", precision="fp16"), SMALL)
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit):
        main(["train", "--stage", "vae", "--out", str(tmp_path / "cli"), "--steps", "1", "--precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


def same_weights(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    one, other = first.state_dict(), second.state_dict()
    return one.keys() == other.keys() and all(torch.equal(one[k], other[k]) for k in one)


def test_train_unet_tunes_the_unet_and_leaves_the_prior(run_folder, tmp_path):
    """--train-unet: the one-step leg trains the UNet with the adaptor. RUN/model gets the tuned UNet while RUN/unet
    (the prior) stays; the checkpoint holds it, so a resume without the option keeps it (frozen, and checkpointed
    again) and a resume with it trains it on. Without the option the UNet is never touched."""
    from spire_rt.models.spire_model import load_component

    copy_adaptor_inputs(run_folder[0], tmp_path)
    one_step = {"strength": (0.1, 0.3), "start_noise": 0.0}
    prior = load_component(tmp_path / "unet", "unet")
    stage = make_stage(config(tmp_path, "adaptor", steps=12, train_unet=True, **one_step), recipe.AdaptorStage)
    before = held_loss(stage)
    stage.train()
    assert held_loss(stage) < before
    tuned = load_model(tmp_path / "model").unet
    assert not same_weights(tuned, prior)
    assert same_weights(load_component(tmp_path / "unet", "unet"), prior)
    state = torch.load(tmp_path / "adaptor.ckpt", weights_only=False)
    assert "unet" in state["modules"] and len(state["optimizer"]["param_groups"]) == 2

    recipe.run_stage(config(tmp_path, "adaptor", steps=2, resume=True, **one_step), SMALL)
    assert same_weights(load_model(tmp_path / "model").unet, tuned)
    state = torch.load(tmp_path / "adaptor.ckpt", weights_only=False)
    assert "unet" in state["modules"] and len(state["optimizer"]["param_groups"]) == 1

    recipe.run_stage(config(tmp_path, "adaptor", steps=2, resume=True, train_unet=True, **one_step), SMALL)
    trained_on = load_model(tmp_path / "model").unet
    assert not same_weights(trained_on, tuned) and not same_weights(trained_on, prior)


def test_adaptor_stage_leaves_the_unet_frozen_by_default(run_folder, tmp_path):
    from spire_rt.models.spire_model import load_component

    copy_adaptor_inputs(run_folder[0], tmp_path)
    recipe.run_stage(config(tmp_path, "adaptor", steps=3, strength=(0.1, 0.3), start_noise=0.0), SMALL)
    assert same_weights(load_model(tmp_path / "model").unet, load_component(tmp_path / "unet", "unet"))
    assert "unet" not in torch.load(tmp_path / "adaptor.ckpt", weights_only=False)["modules"]


def test_resume_carries_the_optimiser_state_of_the_groups_both_runs_train():
    from spire_rt.errors import SpireError

    always, optional = torch.nn.Linear(3, 2), torch.nn.Linear(2, 1, bias=False)

    def stepped(groups):
        optimizer = torch.optim.AdamW(groups, lr=1e-2)
        sum(p.square().sum() for group in groups for p in group["params"]).backward()
        optimizer.step()
        optimizer.zero_grad()
        return optimizer

    one_group = stepped([{"params": list(always.parameters())}])
    grown = torch.optim.AdamW([{"params": list(always.parameters())}, {"params": list(optional.parameters())}])
    grown.load_state_dict(recipe.carried_optimizer_state(one_group.state_dict(), grown.state_dict()))
    for p in always.parameters():
        assert torch.equal(grown.state[p]["exp_avg"], one_group.state[p]["exp_avg"])
        assert grown.state[p]["step"] == 1
    assert all(p not in grown.state for p in optional.parameters())
    sum(p.square().sum() for p in [*always.parameters(), *optional.parameters()]).backward()
    grown.step()  # the fresh group starts its own moments
    assert all(grown.state[p]["step"] == 1 for p in optional.parameters())
    assert all(grown.state[p]["step"] == 2 for p in always.parameters())

    shrunk = torch.optim.AdamW([{"params": list(always.parameters())}])
    shrunk.load_state_dict(recipe.carried_optimizer_state(grown.state_dict(), shrunk.state_dict()))
    assert set(shrunk.state) == set(always.parameters())
    assert all(torch.equal(shrunk.state[p]["exp_avg"], grown.state[p]["exp_avg"]) for p in always.parameters())

    other = torch.optim.AdamW([{"params": [*always.parameters(), *optional.parameters()]}])
    with pytest.raises(SpireError, match="3 parameters in a group where this run has 2: not the same networks"):
        shrunk.load_state_dict(recipe.carried_optimizer_state(other.state_dict(), shrunk.state_dict()))


def test_resume_matches_named_optimiser_groups_by_name():
    """Groups that carry names (every stage names them now) are matched by name, so any mix of the adaptor's
    optional groups (--train-unet, --train-decoder) resumes: a group both runs train keeps its moments."""
    adaptor, unet, decoder = torch.nn.Linear(3, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 1, bias=False)

    def groups(**parts):
        return [{"name": name, "params": list(part.parameters())} for name, part in parts.items()]

    three = torch.optim.AdamW(groups(adaptor=adaptor, unet=unet, decoder=decoder), lr=1e-2)
    sum(p.square().sum() for part in (adaptor, unet, decoder) for p in part.parameters()).backward()
    three.step()
    without_unet = torch.optim.AdamW(groups(adaptor=adaptor, decoder=decoder))
    without_unet.load_state_dict(recipe.carried_optimizer_state(three.state_dict(), without_unet.state_dict()))
    for p in [*adaptor.parameters(), *decoder.parameters()]:
        assert torch.equal(without_unet.state[p]["exp_avg"], three.state[p]["exp_avg"])
    assert [group["name"] for group in without_unet.param_groups] == ["adaptor", "decoder"]

    with_unet_again = torch.optim.AdamW(groups(adaptor=adaptor, unet=unet, decoder=decoder))
    with_unet_again.load_state_dict(recipe.carried_optimizer_state(without_unet.state_dict(),
                                                                   with_unet_again.state_dict()))
    assert all(p not in with_unet_again.state for p in unet.parameters())  # fresh: the checkpoint had no unet
    assert all(torch.equal(with_unet_again.state[p]["exp_avg"], three.state[p]["exp_avg"])
               for p in decoder.parameters())


def test_train_unet_is_refused_outside_the_adaptor_stage(tmp_path, capsys):
    from spire_rt.cli import main

    code = main(["train", "--stage", "decoder", "--out", str(tmp_path / "cli"), "--steps", "1", "--train-unet"])
    assert code == 2 and "--train-unet applies to the adaptor stage only" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()


def test_train_cli_passes_fidelity_on(tmp_path, capsys):
    from spire_rt.cli import main

    code = main(["train", "--stage", "decoder", "--out", str(tmp_path / "cli"), "--steps", "1", "--fidelity",
                 "--landing-rate", "0.8"])
    assert code == 2 and "needs --landing-rate 1" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()


def test_fidelity_width_sizes_a_fresh_branch_and_widens_a_trained_one(run_folder, tmp_path):
    """--fidelity-width: a fresh branch of that width; RUN/fidelity widened to it (with --fresh), decoding as
    before, trained and saved wide; a --resume whose checkpoint holds the narrower branch, or a narrower width, is
    refused before anything is written or set aside."""
    from spire_rt.errors import SpireError
    from spire_rt.models.networks import VaeDecoderNet
    from spire_rt.models.spire_model import load_component

    copy_decoder_inputs(run_folder[0], tmp_path)
    options = {"landing_rate": 1.0, "fidelity": True}
    fresh = make_stage(config(tmp_path, "decoder", steps=2, fidelity_width=8, **options), recipe.DecoderStage)
    assert fresh.fidelity.config.width == 8
    fresh.train()
    narrow = load_component(tmp_path / "fidelity", "fidelity")
    assert narrow.config.width == 8

    saved_before = (tmp_path / "fidelity" / "config.json").read_text()
    with pytest.raises(SpireError, match="holds a fidelity branch of 8 channels and --fidelity-width asks for 12"):
        make_stage(config(tmp_path, "decoder", steps=2, resume=True, fidelity_width=12, **options),
                   recipe.DecoderStage)
    with pytest.raises(SpireError, match="widened, not narrowed: it has 8 channels, asked 4"):
        make_stage(config(tmp_path, "decoder", steps=2, fidelity_width=4, fresh=True, **options),
                   recipe.DecoderStage)
    assert (tmp_path / "fidelity" / "config.json").read_text() == saved_before
    assert (tmp_path / "decoder.ckpt").exists()  # a refused run sets nothing aside

    wide = make_stage(config(tmp_path, "decoder", steps=2, fidelity_width=12, fresh=True, **options),
                      recipe.DecoderStage)
    assert wide.fidelity.config.width == 12
    assert len(list(tmp_path.glob("decoder.2*.ckpt"))) == 1  # the narrow run's checkpoint, kept
    latent, y = torch.randn(1, 4, 8, 8), torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(VaeDecoderNet(wide.vae, wide.fidelity)(latent, y),
                                   VaeDecoderNet(wide.vae, narrow)(latent, y))
    wide.train()
    assert load_component(tmp_path / "fidelity", "fidelity").config.width == 12
    resumed = make_stage(config(tmp_path, "decoder", steps=1, resume=True, fidelity_width=12, **options),
                         recipe.DecoderStage)
    assert resumed.fidelity.config.width == 12
    narrow.save_pretrained(tmp_path / "fidelity")  # RUN/fidelity swapped by hand for a branch of another width
    with pytest.raises(SpireError, match=r"holds a fidelity branch of 12 channels and \S*fidelity has 8"):
        make_stage(config(tmp_path, "decoder", steps=1, resume=True, **options), recipe.DecoderStage)


@pytest.mark.parametrize(("arguments", "message"), [
    (["--fidelity-width", "48", "--landing-rate", "1"], "--fidelity-width needs --fidelity"),
    (["--fidelity", "--fidelity-width", "0", "--landing-rate", "1"], "--fidelity-width must be 1 or more, got 0"),
])
def test_train_cli_refuses_bad_fidelity_widths(tmp_path, capsys, arguments, message):
    from spire_rt.cli import main

    code = main(["train", "--stage", "decoder", "--out", str(tmp_path / "cli"), "--steps", "1", *arguments])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()


def test_train_decoder_trains_the_decoder_and_branch_with_the_adaptor(run_folder, tmp_path):
    """--train-decoder: the decoder and fidelity branch learn on the adaptor's one-step pixel loss. RUN/vae and
    RUN/fidelity get them (the encoder and scaling stay), RUN/model decodes with them, the checkpoint keeps a
    copy of them, not a module it loads. A decoder leg's --resume, whose checkpoint holds the older decoder, is
    then refused; --fresh carries the new one on; and the adaptor's next resume drops the decoder's stale
    optimiser moments."""
    import shutil

    from spire_rt.models.spire_model import load_component

    copy_decoder_inputs(run_folder[0], tmp_path)
    for part in ("unet", "text_encoder"):
        shutil.copytree(run_folder[0] / part, tmp_path / part)
    recipe.run_stage(config(tmp_path, "decoder", steps=3, landing_rate=1.0, fidelity=True), SMALL)
    vae_before = load_component(tmp_path / "vae", "vae")
    branch_before = load_component(tmp_path / "fidelity", "fidelity")
    one_step = {"strength": (0.1, 0.3), "start_noise": 0.0, "loss_space": "pixel"}
    stage = make_stage(config(tmp_path, "adaptor", steps=12, train_decoder=True, rank_rate=0.5, **one_step),
                       recipe.AdaptorStage)
    assert len(stage.optimizer.param_groups) == 2  # adaptor and text encoder, then the decoder and branch
    before = held_loss(stage)
    stage.train()
    assert held_loss(stage) < before

    vae, branch = load_component(tmp_path / "vae", "vae"), load_component(tmp_path / "fidelity", "fidelity")
    assert same_weights(vae.encoder, vae_before.encoder) and same_weights(vae.quant_conv, vae_before.quant_conv)
    assert vae.config.scaling_factor == vae_before.config.scaling_factor
    assert not same_weights(vae.decoder, vae_before.decoder) and not same_weights(branch, branch_before)
    model = load_model(tmp_path / "model")
    assert same_weights(model.vae, vae) and same_weights(model.fidelity, branch)
    state = torch.load(tmp_path / "adaptor.ckpt", weights_only=False)
    assert set(state["modules"]) == {"adaptor", "text_encoder"}
    for name, tensor in vae.state_dict().items():  # kept for a --fresh that sets the checkpoint aside
        assert torch.equal(state["decoder_weights"]["vae"][name], tensor), name
    assert set(state["decoder_weights"]) == {"vae", "fidelity"}
    unchanged = make_stage(config(tmp_path, "adaptor", steps=1, train_decoder=True, resume=True, **one_step),
                           recipe.AdaptorStage)
    assert all(p in unchanged.optimizer.state for part in unchanged.decoder_parts for p in part.parameters())

    from spire_rt.errors import SpireError

    with pytest.raises(SpireError, match="a later run trained it .* give --fresh"):
        recipe.run_stage(config(tmp_path, "decoder", steps=1, landing_rate=1.0, fidelity=True, resume=True), SMALL)
    assert same_weights(load_component(tmp_path / "vae", "vae"), vae)  # refused before anything was written
    recipe.run_stage(config(tmp_path, "decoder", steps=2, landing_rate=1.0, fidelity=True, fresh=True), SMALL)
    after_decoder_leg = load_component(tmp_path / "vae", "vae")
    assert not same_weights(after_decoder_leg.decoder, vae.decoder)  # it carried the joint leg's decoder on

    resumed = make_stage(config(tmp_path, "adaptor", steps=1, train_decoder=True, resume=True, **one_step),
                         recipe.AdaptorStage)
    decoder_params = [p for part in resumed.decoder_parts for p in part.parameters()]
    assert all(p not in resumed.optimizer.state for p in decoder_params)
    assert all(p in resumed.optimizer.state for p in resumed.adaptor.parameters())
    assert same_weights(resumed.vae.decoder, after_decoder_leg.decoder)  # RUN/vae's decoder, not an older one

    kept = {path.name: path.read_bytes() for path in (tmp_path / "vae").iterdir()}
    recipe.run_stage(config(tmp_path, "adaptor", steps=1, resume=True, **one_step), SMALL)
    assert {path.name: path.read_bytes() for path in (tmp_path / "vae").iterdir()} == kept  # untouched without it


def test_rank_penalty_reaches_a_trained_decoder_through_the_latent_only(run_folder, tmp_path):
    copy_adaptor_inputs(run_folder[0], tmp_path)
    stage = make_stage(config(tmp_path, "adaptor", strength=(0.1, 0.3), start_noise=0.0, loss_space="pixel",
                              train_decoder=True, rank_rate=1.0), recipe.AdaptorStage)
    y = torch.rand(2, 3, 16, 16)
    prompts = ["Denoise with sigma 0.10", "Deblur with sigma 2.0"]
    y_latent, t = stage.latents(y), stage.one_step_timesteps(2)
    landed = stage.schedule.predict_x0(y_latent, stage.predict(y_latent, t, y_latent, prompts), t)
    penalty, ranked = stage.rank_penalty(y_latent, t, y, y_latent, prompts, landed)
    assert ranked == 2
    penalty.backward()  # a decoder in the graph gets a gradient (zeros where the hinge is slack), so None means not
    assert all(p.grad is None for part in stage.decoder_parts for p in part.parameters())
    assert any(p.grad is not None for p in stage.adaptor.parameters())  # the penalty reaches the adaptor
    stage.optimizer.zero_grad(set_to_none=True)

    latent, y = torch.randn(1, 4, 8, 8, requires_grad=True), torch.rand(1, 3, 16, 16)
    decoder_params = [p for part in stage.decoder_parts for p in part.parameters()]
    stage.decoded(latent, y, frozen=True).square().sum().backward()
    assert latent.grad is not None and latent.grad.abs().sum() > 0
    assert all(p.grad is None for p in decoder_params)
    frozen_image = stage.decoded(latent, y, frozen=True).detach()
    stage.decoded(latent, y).square().sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder_params)
    torch.testing.assert_close(stage.decoded(latent, y).detach(), frozen_image)


@pytest.mark.parametrize(("arguments", "message"), [
    (["--stage", "decoder", "--landing-rate", "1"], "--train-decoder applies to the adaptor stage with --loss-space"),
    (["--stage", "adaptor", "--strength", "0.1", "0.3"], "only the pixel loss reaches the decoder"),
])
def test_train_decoder_is_refused_without_the_pixel_loss(tmp_path, capsys, arguments, message):
    from spire_rt.cli import main

    code = main(["train", *arguments, "--out", str(tmp_path / "cli"), "--steps", "1", "--train-decoder"])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()

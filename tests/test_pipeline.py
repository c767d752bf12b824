"""The restoration pipeline: determinism, sizes, image kinds, caching, guidance batching, and a diffusers oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image

from spire_rt.backends.torch_backend import TorchBackend
from spire_rt.errors import OptionError
from spire_rt.pipeline import Restorer, pad_to_multiple
from spire_rt.prompts import PromptError


@pytest.fixture(scope="module")
def restorer():
    from spire_rt.models import build_preset

    model = build_preset("tiny")
    return Restorer(model, TorchBackend(model))


@pytest.fixture()
def image(photo_like):
    return Image.fromarray(np.round(photo_like * 255).astype(np.uint8))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def test_same_seed_same_image_and_different_seed_different(restorer, image):
    first = restorer(image, seed=7, steps=2)
    second = restorer(image, seed=7, steps=2)
    third = restorer(image, seed=8, steps=2)
    assert np.array_equal(pixels(first), pixels(second))
    assert np.abs(pixels(first) - pixels(third)).mean() > 1.0


def test_output_size_follows_input_and_upsample(restorer):
    odd = Image.fromarray(np.full((37, 53, 3), 128, np.uint8))
    assert restorer(odd, seed=0, steps=1).size == (53, 37)
    multiple = restorer.model.pixel_multiple
    assert restorer.last_run.padded_size == (-(-37 // multiple) * multiple, -(-53 // multiple) * multiple)
    upsampled = restorer(odd, seed=0, steps=1, restore="Upsample to 2.5x; Denoise with sigma 0.05")
    assert upsampled.size == (round(53 * 2.5), round(37 * 2.5))
    assert restorer.last_run.options.restore == "Upsample to 2.5x; Denoise with sigma 0.05"


def test_grey_alpha_and_16_bit_inputs_keep_their_kind(restorer):
    grey = Image.fromarray(np.linspace(0, 255, 32 * 40).reshape(32, 40).astype(np.uint8), "L")
    assert restorer(grey, seed=0, steps=1).mode == "L"

    rgba = np.full((32, 40, 4), 100, np.uint8)
    rgba[:, :20, 3] = 0
    rgba[:, 20:, 3] = 255
    restored = restorer(Image.fromarray(rgba, "RGBA"), seed=0, steps=1)
    assert restored.mode == "RGBA"
    alpha = np.asarray(restored)[:, :, 3]
    assert alpha[:, :18].max() <= 5 and alpha[:, 22:].min() >= 250  # carried through, not restored

    deep = Image.fromarray((np.arange(32 * 40).reshape(32, 40) * 40).astype(np.uint16))
    assert restorer(deep, seed=0, steps=1).mode in ("I;16", "I")


def test_prompt_embeddings_are_cached(restorer, image):
    restorer(image, seed=0, steps=1, restore="Deblur with sigma 1.5", prompt="a cat")
    before = restorer.prompts.encoded_count
    restorer(image, seed=1, steps=1, restore="deblur  with sigma 1.50.", prompt="a cat")
    assert restorer.prompts.encoded_count == before


def test_guided_step_runs_adaptor_once_at_batch_1_and_unet_at_batch_2(restorer, image):
    batches = {"adaptor": [], "unet": []}
    hooks = [
        restorer.model.controlnet.conv_in.register_forward_hook(
            lambda m, i, out: batches["adaptor"].append(out.shape[0])),
        restorer.model.unet.conv_in.register_forward_hook(lambda m, i, out: batches["unet"].append(out.shape[0])),
    ]
    try:
        restorer(image, seed=0, steps=3, prompt="a red square", guidance=5.0)
        guided = dict(batches)
        batches.update(adaptor=[], unet=[])
        restorer(image, seed=0, steps=3, prompt="")
    finally:
        for hook in hooks:
            hook.remove()
    assert guided == {"adaptor": [1, 1, 1], "unet": [2, 2, 2]}
    assert batches == {"adaptor": [1, 1, 1], "unet": [1, 1, 1]}


def test_strength_below_one_starts_later_in_the_schedule(restorer, image):
    restorer(image, seed=0, steps=4, strength=0.5)
    assert restorer.last_run.timesteps == [499, 374, 249, 124]
    assert set(restorer.last_run.timings) >= {"validate", "encode_prompts", "prepare_latents", "denoise",
                                              "decode", "postprocess", "total"}


@pytest.mark.parametrize("options, error", [
    ({"steps": 0}, OptionError),
    ({"sampler": "euler"}, OptionError),
    ({"strength": 1.5}, OptionError),
    ({"color_fix": "magic"}, OptionError),
    ({"guidance": float("nan")}, OptionError),
    ({"ensemble": 0}, OptionError),
    ({"ensemble": 5}, OptionError),
    ({"ensemble": 2.0}, OptionError),
    ({"ensemble": True}, OptionError),
    ({"restore": "Deblur with sigma"}, PromptError),
    ({"restore": "Denoise with sigma 0.9"}, PromptError),
])
def test_bad_options_are_clear_errors(restorer, image, options, error):
    with pytest.raises(error):
        restorer(image, **options)


def test_start_noise_zero_is_a_deterministic_start_from_the_degraded_latent(restorer, image):
    first = restorer(image, seed=1, steps=1, strength=0.2, start_noise=0.0)
    second = restorer(image, seed=2, steps=1, strength=0.2, start_noise=0.0)
    noisy = restorer(image, seed=2, steps=1, strength=0.2)
    assert np.array_equal(pixels(first), pixels(second))
    assert np.abs(pixels(noisy) - pixels(second)).mean() > 0.5
    with pytest.raises(OptionError, match="start noise"):
        restorer(image, strength=0.2, start_noise=1.5)


def test_model_restore_defaults_fill_in_what_the_caller_leaves_out(image):
    from dataclasses import replace

    from spire_rt.models import build_preset

    model = replace(build_preset("tiny"), restore_defaults={"steps": 1, "strength": 0.2})
    restorer = Restorer(model, TorchBackend(model))
    restorer(image, seed=0)
    assert restorer.last_run.timesteps == [199]  # one step at strength 0.2, from the model
    assert restorer.last_run.options.sampler == "dpmpp_2m"  # RestoreOptions' own default
    restorer(image, seed=0, steps=2, strength=1.0)  # the caller's options win
    assert restorer.last_run.timesteps == [999, 499]


def test_unknown_option_is_a_type_error(restorer, image):
    with pytest.raises(TypeError, match="stepz"):
        restorer(image, stepz=3)


def test_pipeline_matches_plain_diffusers_loop(image):
    """Adaptor strength 0, no colour fix: the pipeline is DDIM over diffusers' own UNet, scheduler and VAE."""
    from spire_rt.models import build_preset

    model = build_preset("tiny")
    restorer = Restorer(model, TorchBackend(model))
    ours = restorer(image, seed=3, steps=4, sampler="ddim", adaptor_strength=0.0, color_fix="none")

    height, width = restorer.last_run.padded_size
    factor = model.vae_scale_factor
    noise = torch.randn((1, model.latent_channels, height // factor, width // factor),
                        generator=torch.Generator().manual_seed(3))
    scheduler = DDIMScheduler(**{k: v for k, v in model.scheduler_config.items() if not k.startswith("_")},
                              timestep_spacing="trailing")
    scheduler.register_to_config(set_alpha_to_one=True)
    scheduler = DDIMScheduler.from_config(scheduler.config)
    scheduler.set_timesteps(4)
    ids = model.tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        embeddings = model.text_encoder(ids)[0]
        latent = noise
        for t in scheduler.timesteps:
            latent = scheduler.step(model.unet(latent, t, embeddings).sample, t, latent).prev_sample
        decoded = model.vae.decode(latent / model.vae.config.scaling_factor).sample
    reference = ((decoded[0, :, :64, :80] + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy()
    difference = np.abs(pixels(ours) / 255 - reference)
    assert difference.max() <= 1 / 255 + 1e-4  # equal up to the 8-bit rounding of the output


def test_self_ensemble_averages_the_flipped_restorations_as_images(restorer, image):
    """Without a colour fix, --ensemble 2 is the mean of the restoration and the flipped-back restoration of the
    flipped image, wherever neither member was clipped (up to the 8-bit rounding of each)."""
    deterministic = {"steps": 1, "strength": 0.3, "start_noise": 0.0, "color_fix": "none"}
    plain = pixels(restorer(image, **deterministic))
    mirrored = pixels(restorer(image.transpose(Image.FLIP_LEFT_RIGHT), **deterministic))[:, ::-1]
    ensemble = pixels(restorer(image, ensemble=np.int64(2), **deterministic))

    unclipped = (plain > 0) & (plain < 255) & (mirrored > 0) & (mirrored < 255)
    assert unclipped.mean() > 0.5
    assert np.abs(plain - mirrored)[unclipped].mean() > 1.0  # the members differ: the mean is not one of them
    assert np.abs(ensemble - (plain + mirrored) / 2)[unclipped].max() <= 1.0


def test_self_ensemble_progress_counts_the_steps_of_every_member(restorer, image):
    progress = []
    restorer(image, steps=2, ensemble=2, progress=lambda done, total: progress.append((done, total)))
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_self_ensemble_serves_padding_alpha_upsampling_guidance_and_a_noise_start(restorer):
    """A 37x53 RGBA image (padded to the networks' multiple) upsampled 2x under a semantic prompt, from pure noise."""
    rgba = np.full((37, 53, 4), 200, np.uint8)
    rgba[:, :, 0] = np.linspace(0, 255, 53).astype(np.uint8)
    options = {"restore": "Upsample to 2x", "prompt": "a red square", "guidance": 4.0, "steps": 2, "seed": 5}
    single = restorer(Image.fromarray(rgba, "RGBA"), ensemble=1, **options)
    ensemble = restorer(Image.fromarray(rgba, "RGBA"), ensemble=4, **options)
    assert ensemble.mode == "RGBA" and ensemble.size == single.size == (106, 74)
    assert np.array_equal(np.asarray(ensemble)[..., 3], np.asarray(single)[..., 3])  # alpha is not ensembled
    assert np.abs(pixels(ensemble)[..., :3] - pixels(single)[..., :3]).mean() > 1.0


def test_self_ensemble_of_all_four_flips_commutes_with_flipping_the_input(restorer, image):
    options = {"steps": 1, "strength": 0.3, "start_noise": 0.0, "ensemble": 4}
    upside_down = image.transpose(Image.FLIP_TOP_BOTTOM)
    restored = pixels(restorer(image, **options))
    assert np.abs(pixels(restorer(upside_down, **options))[::-1] - restored).max() <= 1.0
    single = {**options, "ensemble": 1}
    unrelated = pixels(restorer(upside_down, **single))[::-1] - pixels(restorer(image, **single))
    assert np.abs(unrelated).mean() > 1.0  # a single pass does not commute: the test above can fail


def test_pad_to_multiple_reflects_or_repeats():
    image = torch.arange(12.0).reshape(1, 1, 3, 4)
    padded = pad_to_multiple(image, 4)
    assert padded.shape == (1, 1, 4, 4)
    assert torch.equal(padded[0, 0, 3], image[0, 0, 1])  # reflected row
    tiny = pad_to_multiple(torch.ones(1, 1, 1, 1), 16)
    assert tiny.shape == (1, 1, 16, 16)


def test_fidelity_branch_sees_each_members_own_flip_of_y(image):
    """A model whose decoder reads y (models/fidelity.py): a fresh branch restores exactly as the model without
    one; a trained one changes the restoration, and the four-flip ensemble still commutes with flipping the input,
    which holds only if each member's decoder sees y flipped as that member's latent is."""
    from conftest import randomize_fidelity

    from spire_rt.models import build_preset
    from spire_rt.models.fidelity import FidelityBranch

    model = build_preset("tiny")
    restorer = Restorer(model, TorchBackend(model))
    options = {"steps": 1, "strength": 0.3, "start_noise": 0.0, "ensemble": 4}
    without = pixels(restorer(image, **options))
    model.fidelity = FidelityBranch.for_vae(model.vae)
    restorer = Restorer(model, TorchBackend(model))
    assert np.array_equal(pixels(restorer(image, **options)), without)

    randomize_fidelity(model.fidelity, scale=0.2)
    restored = pixels(restorer(image, **options))
    assert np.abs(restored - without).mean() > 1.0
    upside_down = image.transpose(Image.FLIP_TOP_BOTTOM)
    assert np.abs(pixels(restorer(upside_down, **options))[::-1] - restored).max() <= 1.0

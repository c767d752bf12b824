"""Oracle tests for spire_rt.sampling: our stateless samplers against diffusers' own schedulers.

Both sides run the same deterministic toy denoiser from the same initial latents over the same timesteps;
diffusers computes its coefficients in float32, we in float64, so the outputs agree to float32 rounding.
"""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from hypothesis import given, settings
from hypothesis import strategies as st

from spire_rt.sampling import (
    SAMPLERS,
    NoiseSchedule,
    sample_ddim,
    sample_dpmpp_2m,
    trailing_timesteps,
)

BETAS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}
STEPS = (1, 2, 4, 10, 25)
PREDICTIONS = ("epsilon", "v_prediction")
ATOL = 1e-5

# diffusers' DPMSolverMultistepScheduler.set_timesteps calls np.array on a tensor (numpy 2 deprecation); not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def toy_denoiser(dtype=torch.float32):
    """A pure function of (x, t): a fixed random linear map under a tanh, plus a term in t.

    Close to the identity so that, as with a real eps-model at high noise, x0 = (x - sigma eps) / alpha stays O(1).
    """
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(8, 8, generator=g) / 8**0.5).to(dtype)
    c = torch.randn(4, 1, 1, generator=g).to(dtype)

    def denoise(x, t):
        assert t.shape == (1,) and t.dtype == torch.int64
        return 0.9 * x + 0.1 * torch.tanh(x @ w) + 0.05 * torch.cos(t.to(x.dtype) * 3e-3) * c

    return denoise


def initial_latents(dtype=torch.float32):
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)).to(dtype)


def ddim_scheduler(prediction_type):
    return DDIMScheduler(
        **BETAS,
        timestep_spacing="trailing",
        set_alpha_to_one=True,  # the last step lands on abar = 1: it returns the x0 prediction, as ours does
        clip_sample=False,
        prediction_type=prediction_type,
    )


def dpm_scheduler(prediction_type, solver_order=2):
    return DPMSolverMultistepScheduler(
        **BETAS,
        algorithm_type="dpmsolver++",
        solver_order=solver_order,
        timestep_spacing="trailing",
        # sigma_last = 0: diffusers then always takes a first-order final step (step(): `or final_sigmas_type ==
        # "zero"`), which returns the x0 prediction, for every step count; lower_order_final only matters < 15.
        final_sigmas_type="zero",
        lower_order_final=True,
        use_karras_sigmas=False,
        prediction_type=prediction_type,
    )


def diffusers_loop(scheduler, denoise, x):
    for t in scheduler.timesteps:
        x = scheduler.step(denoise(x, t.reshape(1)), t, x).prev_sample
    return x


def max_diff(a, b):
    return (a.double() - b.double()).abs().max().item()


# ---- oracle: diffusers' schedulers -------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("steps", STEPS)
def test_ddim_matches_diffusers(steps, prediction_type):
    # Step counts that divide T: diffusers' DDIM steps from t to t - T // steps, which is the next trailing
    # timestep only then (for 3 steps it goes 666 -> 333 where the list says 332; ours follows the list).
    scheduler = ddim_scheduler(prediction_type)
    scheduler.set_timesteps(steps)
    timesteps = trailing_timesteps(steps)
    assert torch.equal(scheduler.timesteps, timesteps)
    denoise, x = toy_denoiser(), initial_latents()
    expected = diffusers_loop(scheduler, denoise, x)
    got = sample_ddim(denoise, x, timesteps, NoiseSchedule.from_config(scheduler.config))
    assert got.dtype == x.dtype and got.shape == x.shape
    assert max_diff(got, expected) <= ATOL


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("steps", (*STEPS, 7))
def test_dpmpp_2m_matches_diffusers(steps, prediction_type):
    scheduler = dpm_scheduler(prediction_type)
    scheduler.set_timesteps(steps)
    timesteps = trailing_timesteps(steps)
    assert torch.equal(scheduler.timesteps, timesteps)
    denoise, x = toy_denoiser(), initial_latents()
    expected = diffusers_loop(scheduler, denoise, x)
    got = sample_dpmpp_2m(denoise, x, timesteps, NoiseSchedule.from_config(scheduler.config))
    assert got.dtype == x.dtype and got.shape == x.shape
    assert max_diff(got, expected) <= ATOL


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("steps", (1, 2, 4, 10))
def test_dpmpp_2m_partial_strength_matches_diffusers(steps, prediction_type):
    timesteps = trailing_timesteps(steps, strength=0.5)
    scheduler = dpm_scheduler(prediction_type)
    scheduler.set_timesteps(timesteps=timesteps.tolist())
    denoise, x = toy_denoiser(), initial_latents()
    expected = diffusers_loop(scheduler, denoise, x)
    got = sample_dpmpp_2m(denoise, x, timesteps, NoiseSchedule.from_config(scheduler.config))
    assert max_diff(got, expected) <= ATOL


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("steps", (1, 2, 4, 10))
def test_ddim_partial_strength_matches_diffusers_first_order_dpm(steps, prediction_type):
    # DDIMScheduler.set_timesteps takes no custom timesteps; first-order DPM-Solver++ is DDIM written in the data
    # prediction (diffusers: "equivalent to DDIM"), and it does. The paper-equation loop below checks the same.
    timesteps = trailing_timesteps(steps, strength=0.5)
    scheduler = dpm_scheduler(prediction_type, solver_order=1)
    scheduler.set_timesteps(timesteps=timesteps.tolist())
    denoise, x = toy_denoiser(), initial_latents()
    expected = diffusers_loop(scheduler, denoise, x)
    got = sample_ddim(denoise, x, timesteps, NoiseSchedule.from_config(scheduler.config))
    assert max_diff(got, expected) <= ATOL


def reference_ddim(denoise, x, timesteps, alphas_cumprod, prediction_type):
    """Song et al. 2021, eq. 12 with sigma_t = 0, written out; the step after the last lands on abar = 1."""
    for i, t in enumerate(timesteps.tolist()):
        a_t = alphas_cumprod[t]
        a_next = (
            alphas_cumprod[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.tensor(1.0, dtype=x.dtype)
        )
        out = denoise(x, torch.tensor([t]))
        if prediction_type == "epsilon":
            eps = out
            x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        else:  # Salimans & Ho 2022: v = alpha eps - sigma x0
            x0 = a_t.sqrt() * x - (1 - a_t).sqrt() * out
            eps = (1 - a_t).sqrt() * x + a_t.sqrt() * out
        x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    return x


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize(("steps", "strength"), [(7, 1.0), (3, 1.0), (1, 0.5), (4, 0.5), (10, 0.3)])
def test_ddim_matches_paper_equations_in_float64(steps, strength, prediction_type):
    alphas_cumprod = ddim_scheduler(prediction_type).alphas_cumprod.double()
    schedule = NoiseSchedule(alphas_cumprod, prediction_type)
    timesteps = trailing_timesteps(steps, strength=strength)
    denoise, x = toy_denoiser(torch.float64), initial_latents(torch.float64)
    expected = reference_ddim(denoise, x, timesteps, alphas_cumprod, prediction_type)
    got = sample_ddim(denoise, x, timesteps, schedule)
    assert got.dtype == torch.float64
    assert max_diff(got, expected) <= 1e-10


# ---- trailing_timesteps ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "strength", "expected"),
    [
        (1, 1.0, [999]),
        (4, 1.0, [999, 749, 499, 249]),
        (3, 1.0, [999, 666, 332]),
        (4, 0.5, [499, 374, 249, 124]),
        (10, 0.3, [299, 269, 239, 209, 179, 149, 119, 89, 59, 29]),
        (1, 0.001, [0]),
    ],
)
def test_trailing_timesteps_values(steps, strength, expected):
    timesteps = trailing_timesteps(steps, strength=strength)
    assert timesteps.dtype == torch.int64
    assert timesteps.tolist() == expected


def test_trailing_timesteps_equal_diffusers_for_every_step_count():
    scheduler = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")
    for steps in range(1, 1001):
        scheduler.set_timesteps(steps)
        theirs = scheduler.timesteps
        ours = trailing_timesteps(steps)
        assert torch.equal(ours, theirs[:steps]), steps
        # For some counts (61, 103, ...) numpy's float arange yields steps + 1 values and diffusers keeps an
        # invalid trailing -1; ours stops at `steps`.
        assert theirs[steps:].tolist() in ([], [-1]), steps


@settings(max_examples=200, deadline=None)
@given(
    num_train_timesteps=st.integers(1, 2000),
    strength=st.floats(0.0, 1.0, exclude_min=True),
    data=st.data(),
)
def test_trailing_timesteps_properties(num_train_timesteps, strength, data):
    span = strength * num_train_timesteps
    if span < 1:
        with pytest.raises(ValueError, match="steps"):
            trailing_timesteps(1, num_train_timesteps, strength)
        return
    steps = data.draw(st.integers(1, int(span)))
    timesteps = trailing_timesteps(steps, num_train_timesteps, strength)
    assert timesteps.shape == (steps,)
    assert timesteps.dtype == torch.int64
    assert bool((timesteps[:-1] > timesteps[1:]).all())  # distinct, descending
    assert 0 <= timesteps[-1] and timesteps[0] < span
    assert timesteps[0] == int(np.round(span)) - 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": -3}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"steps": 4, "strength": 0.0}, "strength"),
        ({"steps": 4, "strength": 1.5}, "strength"),
        ({"steps": 4, "strength": float("nan")}, "strength"),
        ({"steps": 501, "strength": 0.5}, "must not exceed"),
        ({"steps": 1001}, "must not exceed"),
        ({"steps": 4, "num_train_timesteps": 0}, "num_train_timesteps"),
    ],
)
def test_trailing_timesteps_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        trailing_timesteps(**kwargs)


# ---- NoiseSchedule -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        BETAS,
        {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"},
        {"num_train_timesteps": 500, "beta_start": 0.001, "beta_end": 0.03, "beta_schedule": "scaled_linear"},
    ],
)
def test_from_config_matches_diffusers_alphas_cumprod(config):
    scheduler = DDIMScheduler(**config, prediction_type="v_prediction")
    schedule = NoiseSchedule.from_config(
        scheduler.config
    )  # the full FrozenDict, as a scheduler_config.json loads
    assert schedule.alphas_cumprod.dtype == torch.float64
    assert torch.equal(schedule.alphas_cumprod, scheduler.alphas_cumprod.double())
    assert schedule.num_train_timesteps == config["num_train_timesteps"]
    assert schedule.prediction_type == "v_prediction"


def test_from_config_reads_sd15_style_config_without_prediction_type():
    config = {
        "_class_name": "PNDMScheduler",
        **BETAS,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
        "clip_sample": False,
    }
    schedule = NoiseSchedule.from_config(config)
    assert schedule.prediction_type == "epsilon"
    assert torch.equal(schedule.alphas_cumprod, DDIMScheduler(**BETAS).alphas_cumprod.double())


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"beta_schedule": "squaredcos_cap_v2"}, "beta_schedule"),
        ({"prediction_type": "sample"}, "prediction_type"),
        ({"trained_betas": [0.1, 0.2]}, "trained_betas"),
        ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
        ({"num_train_timesteps": 0}, "num_train_timesteps"),
        ({"beta_end": 1.5}, "beta"),
        ({"beta_start": "0.001"}, "beta"),
    ],
)
def test_from_config_rejects(override, match):
    with pytest.raises(ValueError, match=match):
        NoiseSchedule.from_config({**BETAS, **override})


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_predict_x0_and_eps_invert_the_forward_process(prediction_type):
    schedule = NoiseSchedule.from_config({**BETAS, "prediction_type": prediction_type})
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 517, 999])
    x_t = schedule.add_noise(x0, eps, t)
    abar = schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    v = abar.sqrt() * eps - (1 - abar).sqrt() * x0
    model_output = eps if prediction_type == "epsilon" else v
    torch.testing.assert_close(schedule.predict_x0(x_t, model_output, t), x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(schedule.predict_eps(x_t, model_output, t), eps, rtol=0, atol=1e-9)
    # a [1]-shaped t broadcasts over the batch
    one = torch.tensor([517])
    torch.testing.assert_close(
        schedule.predict_x0(x_t[1:2], model_output[1:2], one), x0[1:2], rtol=0, atol=1e-9
    )


def test_add_noise_equals_diffusers():
    scheduler = ddim_scheduler("epsilon")
    schedule = NoiseSchedule.from_config(scheduler.config)
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([999, 500, 20, 0])
    got = schedule.add_noise(x0, noise, t)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, scheduler.add_noise(x0, noise, t), rtol=0, atol=1e-6)


def test_noise_schedule_rejects_bad_fields():
    with pytest.raises(ValueError, match="prediction_type"):
        NoiseSchedule(torch.ones(10, dtype=torch.float64), "sample")
    with pytest.raises(ValueError, match="float64"):
        NoiseSchedule(torch.ones(10), "epsilon")


# ---- sampler contract --------------------------------------------------------------------------------------------


def test_samplers_registry():
    assert SAMPLERS == {"ddim": sample_ddim, "dpmpp_2m": sample_dpmpp_2m}


@pytest.mark.parametrize("sampler", SAMPLERS.values())
def test_sampler_keeps_its_input_and_calls_back_once_per_step(sampler):
    schedule = NoiseSchedule.from_config(BETAS)
    timesteps = trailing_timesteps(5)
    x = initial_latents()
    before = x.clone()
    calls = []
    out = sampler(
        toy_denoiser(), x, timesteps, schedule, callback=lambda i, t, y: calls.append((i, t, y.clone()))
    )
    assert torch.equal(x, before)
    assert [i for i, _, _ in calls] == list(range(5))
    assert all(torch.equal(t, timesteps[i : i + 1]) for i, t, _ in calls)
    assert torch.equal(calls[-1][2], out)
    # stateless: a second call gives the same result
    assert torch.equal(sampler(toy_denoiser(), x, timesteps, schedule), out)


@pytest.mark.parametrize("sampler", SAMPLERS.values())
def test_sampler_keeps_low_precision_dtype_and_computes_in_float32(sampler):
    schedule = NoiseSchedule.from_config(BETAS)
    timesteps = trailing_timesteps(4)
    seen = []
    base = toy_denoiser()

    def denoise(x, t):
        seen.append(x.dtype)
        return base(x.float(), t).to(x.dtype)

    x = initial_latents(torch.bfloat16)
    out = sampler(denoise, x, timesteps, schedule)
    assert out.dtype == torch.bfloat16
    assert seen == [torch.bfloat16] * 4
    reference = sampler(toy_denoiser(), x.float(), timesteps, schedule)
    assert max_diff(out, reference) < 0.1


@pytest.mark.parametrize("sampler", SAMPLERS.values())
def test_one_step_returns_the_x0_prediction(sampler):
    schedule = NoiseSchedule.from_config({**BETAS, "prediction_type": "v_prediction"})
    t = trailing_timesteps(1)
    denoise, x = toy_denoiser(), initial_latents()
    expected = schedule.predict_x0(x, denoise(x, t), t)
    torch.testing.assert_close(sampler(denoise, x, t, schedule), expected, rtol=0, atol=1e-6)

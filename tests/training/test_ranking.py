"""The rank objective's parts: raised prompts, the energy the sweep measures (in torch), the hinge."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spire_rt.evaluation.metrics import high_frequency_energy as sweep_energy
from spire_rt.prompts import BLIND_PROMPT, parse_restoration_prompt
from spire_rt.training.ranking import RANK_MARGIN, high_frequency_energy, raised_prompt, rank_hinge


@pytest.mark.parametrize(("height", "width", "sigma"), [(16, 16, 1.0), (23, 40, 1.0), (32, 20, 2.0)])
def test_energy_is_the_sweeps_measure(height, width, sigma):
    images = np.random.default_rng(height).random((3, height, width, 3)).astype(np.float32)
    energies = high_frequency_energy(torch.from_numpy(images).permute(0, 3, 1, 2), sigma)
    expected = [sweep_energy(image, sigma) for image in images]
    np.testing.assert_allclose(energies.numpy(), expected, rtol=1e-4)


def test_energy_has_a_gradient_that_smooths():
    image = torch.rand(1, 3, 16, 16, requires_grad=True)
    high_frequency_energy(image).sum().backward()
    with torch.no_grad():
        stepped = image - 0.05 * image.grad / image.grad.abs().max()
    assert high_frequency_energy(stepped) < high_frequency_energy(image.detach())


@pytest.mark.parametrize(("prompt", "field", "sign"), [
    ("Denoise with sigma 0.10", "denoise", -1),
    ("Deblur with sigma 1.5", "deblur", +1),
    ("Upsample to 2x; Denoise with sigma 0.05; Dejpeg with quality 40", "denoise", -1),
])
def test_raised_prompt_raises_one_sigma_and_keeps_the_rest(prompt, field, sign):
    rng = np.random.default_rng(0)
    original = parse_restoration_prompt(prompt)
    for _ in range(20):
        raised = raised_prompt(prompt, rng)
        parsed = parse_restoration_prompt(raised.text)
        value, before = getattr(parsed, field), getattr(original, field)
        assert raised.sign == sign and 1.25 * before - 0.01 <= value <= 2.0 * before + 0.01
        for other in ("deblur", "upsample", "denoise", "dejpeg"):
            if other != field:
                assert getattr(parsed, other) == getattr(original, other)


def test_raised_prompt_picks_either_sigma_when_both_are_stated():
    rng = np.random.default_rng(1)
    signs = {raised_prompt("Deblur with sigma 1.0; Denoise with sigma 0.08", rng).sign for _ in range(40)}
    assert signs == {-1, +1}


def test_raised_prompt_moves_small_sigmas_and_stays_in_range():
    rng = np.random.default_rng(2)
    assert parse_restoration_prompt(raised_prompt("Denoise with sigma 0.01", rng).text).denoise >= 0.02
    assert parse_restoration_prompt(raised_prompt("Deblur with sigma 7.9", rng).text).deblur == 8.0
    assert parse_restoration_prompt(raised_prompt("Denoise with sigma 0.45", rng).text).denoise == 0.5


@pytest.mark.parametrize("prompt", [BLIND_PROMPT, "Dejpeg with quality 30", "Upsample to 4x",
                                    "Denoise with sigma 0.50", "Deblur with sigma 8.0"])
def test_raised_prompt_is_none_when_nothing_can_rise(prompt):
    assert raised_prompt(prompt, np.random.default_rng(0)) is None


def test_hinge_is_zero_only_past_the_margin_in_the_prompts_direction():
    stated = torch.tensor([1.0, 1.0, 1.0, 1.0])
    raised = torch.tensor([0.5, 1.0, 2.0, float(np.exp(RANK_MARGIN / 2))])
    sign = torch.tensor([-1.0, -1.0, +1.0, +1.0])
    hinge = rank_hinge(stated, raised, sign)
    torch.testing.assert_close(hinge, torch.tensor([0.0, RANK_MARGIN, 0.0, RANK_MARGIN / 2]))
    wrong_way = rank_hinge(stated[:1], torch.tensor([2.0]), sign[:1])
    assert wrong_way.item() == pytest.approx(RANK_MARGIN + np.log(2.0), rel=1e-5)

"""`spire-rt eval`'s numbers against hand-checked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spire_rt.evaluation.metrics import high_frequency_energy, psnr, spearman, ssim


def test_psnr_of_a_known_mse():
    clean = np.full((16, 16, 3), 0.5, np.float32)
    assert psnr(clean, clean + 0.1) == pytest.approx(20.0, abs=1e-4)  # MSE 0.01
    assert psnr(clean, clean + 0.01) == pytest.approx(40.0, abs=1e-3)


def test_identical_images_give_infinite_psnr_and_unit_ssim():
    image = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    assert math.isinf(psnr(image, image))
    assert ssim(image, image) == pytest.approx(1.0)
    assert ssim(image, np.clip(image + 0.2 * np.random.default_rng(1).standard_normal(image.shape), 0, 1)) < 0.9


def test_uint8_and_float_inputs_agree():
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    other = np.clip(image.astype(int) + 3, 0, 255).astype(np.uint8)
    assert psnr(image, other) == pytest.approx(psnr(image / 255.0, other / 255.0), abs=1e-4)


def test_spearman_on_monotone_and_tied_cases():
    sigmas = [0.02, 0.04, 0.06, 0.08]
    assert spearman(sigmas, [9.0, 4.0, 1.0, 0.5]) == pytest.approx(-1.0)
    assert spearman(sigmas, np.exp(sigmas)) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6*2/(4*15)
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]))


def test_high_frequency_energy_falls_with_smoothing():
    from scipy.ndimage import gaussian_filter

    noisy = np.random.default_rng(0).random((64, 64, 3)).astype(np.float32)
    energies = [high_frequency_energy(gaussian_filter(noisy, (s, s, 0))) for s in (0.01, 0.5, 1.0, 2.0)]
    assert energies == sorted(energies, reverse=True)
    assert high_frequency_energy(np.full((8, 8, 3), 0.3)) == pytest.approx(0.0, abs=1e-12)

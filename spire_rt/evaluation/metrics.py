"""Image-quality numbers for `spire-rt eval`: PSNR and SSIM (scikit-image), high-frequency energy, Spearman's rho.

Images are float H x W x 3 in [0, 1]; PSNR and SSIM use data_range 1 (SSIM per channel, averaged).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.stats import rankdata

LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luminance of R, G, B


def as_float(image) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    array = array.astype(np.float32)
    return np.repeat(array[..., None], 3, axis=2) if array.ndim == 2 else array


def psnr(reference: np.ndarray, image: np.ndarray) -> float:
    """10 log10(1 / MSE) in dB; infinite for identical images."""
    from skimage.metrics import peak_signal_noise_ratio

    reference, image = as_float(reference), as_float(image)
    if np.array_equal(reference, image):
        return float("inf")
    return float(peak_signal_noise_ratio(reference, image, data_range=1.0))


def ssim(reference: np.ndarray, image: np.ndarray) -> float:
    """Wang et al. 2004 SSIM (scikit-image's defaults: 7x7 uniform window), mean over the three channels."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(as_float(reference), as_float(image), channel_axis=-1, data_range=1.0))


def high_frequency_energy(image: np.ndarray, sigma: float = 1.0) -> float:
    """Mean square of the luminance minus its Gaussian blur (sigma px): the detail a denoiser removes."""
    rgb = as_float(image)
    luma = rgb @ np.array(LUMA_WEIGHTS, np.float32)
    return float(np.mean((luma - gaussian_filter(luma, sigma, mode="reflect")) ** 2))


def spearman(x, y) -> float:
    """Spearman's rank correlation: Pearson's r of the (average-tied) ranks; nan when either side is constant."""
    rx, ry = rankdata(np.asarray(x, float)), rankdata(np.asarray(y, float))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = np.sqrt((rx**2).sum() * (ry**2).sum())
    return float((rx * ry).sum() / denominator) if denominator > 0 else float("nan")

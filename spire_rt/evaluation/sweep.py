"""The controllability sweep of `spire-rt eval --sweep`: one degraded image, the prompt's sigma stepped.

    noise: the image with noise sigma 0.10, restored with "Denoise with sigma s", s = 0.02, 0.04, .. 0.20
    blur:  the image with blur sigma 2.0, restored with "Deblur with sigma s",   s = 0.5, 1.0, .. 4.0

For each output, the high-frequency energy (metrics.high_frequency_energy). A model that reads the number
smooths more as the prompted noise sigma rises (energy falls: rho near -1) and sharpens more as the prompted
blur sigma rises (energy rises: rho near +1). Spearman's rho between the prompted sigma and the energy.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..degrade import degrade_explicit
from ..staging import staged_file
from .benchmark import centre_crop
from .metrics import as_float, high_frequency_energy, psnr, spearman

SWEEPS = {
    "denoise": {"degradation": {"noise": 0.10}, "verb": "Denoise with sigma {:.2f}",
                "sigmas": [round(0.02 * k, 2) for k in range(1, 11)], "expected_sign": -1},
    "deblur": {"degradation": {"blur": 2.0}, "verb": "Deblur with sigma {:.1f}",
               "sigmas": [round(0.5 * k, 1) for k in range(1, 9)], "expected_sign": +1},
}


def run_sweep(restorer, image: np.ndarray, options: dict, seed: int = 0) -> tuple[dict, dict]:
    """Returns the sweep record (sigmas, energies, PSNRs, rho per sweep) and the outputs for the strip."""
    clean = centre_crop(image)
    record, strips = {}, {}
    for name, sweep in SWEEPS.items():
        degraded, _ = degrade_explicit(clean, seed=seed, **sweep["degradation"])
        energies, psnrs, outputs = [], [], []
        for sigma in sweep["sigmas"]:
            restored = as_float(restorer(degraded, restore=sweep["verb"].format(sigma), **options))
            energies.append(high_frequency_energy(restored))
            psnrs.append(psnr(clean, restored))
            outputs.append(restored)
        rho = spearman(sweep["sigmas"], energies)
        record[name] = {"degradation": sweep["degradation"], "sigmas": sweep["sigmas"], "hf_energy": energies,
                        "psnr": psnrs, "spearman_rho": rho, "expected_sign": sweep["expected_sign"],
                        "input_hf_energy": high_frequency_energy(degraded),
                        "clean_hf_energy": high_frequency_energy(clean),
                        "monotonic": bool(np.isfinite(rho) and rho * sweep["expected_sign"] >= 0.9)}
        strips[name] = [degraded, *outputs, clean]
    return record, strips


def save_strip(strips: dict, path, tile: int = 96) -> None:
    """A row per sweep: degraded input, the outputs as sigma rises, ground truth (centre tiles)."""
    rows = [np.concatenate([centre_crop(image, tile) for image in images], axis=1) for images in strips.values()]
    width = max(row.shape[1] for row in rows)
    rows = [np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)), constant_values=1.0) for row in rows]
    strip = np.round(np.clip(np.concatenate(rows, axis=0), 0, 1) * 255).astype(np.uint8)
    with staged_file(path) as staging:
        Image.fromarray(strip).save(staging, optimize=True)

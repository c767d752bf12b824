"""Where the shipped model's JPEG error sits: at the 8x8 block edges or inside the blocks, in luma or in chroma.

    python bench/results/experiments/landing_legs_an/phase_probe.py     # the validation photographs, ~20 s

For each dejpeg_20 and mixed case it prints, for the degraded input and the model's restoration: the PSNR, the
mean squared error on the block-boundary rows and columns (index 0 or 7 modulo 8) over that of the blocks'
inner 4x4 pixels, and each YCbCr channel's share of the error. A ratio near 1 means no blocking is left to find,
so an input that tells the networks where the grid lies would have little to work on.
"""

import numpy as np

from spire_rt.evaluation.benchmark import build_cases, restore_with_model
from spire_rt.evaluation.cli import VALIDATION_IMAGES, load_images
from spire_rt.pipeline import Restorer

BLOCK = 8  # JPEG's DCT block; the cases are degraded after the crop, so the grid starts at the crop's corner


def ycbcr(image: np.ndarray) -> np.ndarray:
    red, green, blue = image[..., 0], image[..., 1], image[..., 2]
    luma = 0.299 * red + 0.587 * green + 0.114 * blue
    return np.stack([luma, 0.564 * (blue - luma), 0.713 * (red - luma)], axis=-1)


def boundary_over_inner(error: np.ndarray) -> float:
    rows, cols = np.arange(error.shape[0]) % BLOCK, np.arange(error.shape[1]) % BLOCK
    edge_rows, edge_cols = (rows == 0) | (rows == BLOCK - 1), (cols == 0) | (cols == BLOCK - 1)
    inner_rows, inner_cols = (rows >= 2) & (rows <= BLOCK - 3), (cols >= 2) & (cols <= BLOCK - 3)
    boundary = (error[edge_rows].mean() + error[:, edge_cols].mean()) / 2
    return boundary / error[inner_rows][:, inner_cols].mean()


def main() -> None:
    restorer = Restorer.from_pretrained("tiny")
    images = load_images(VALIDATION_IMAGES)
    for family in ("dejpeg_20", "mixed"):
        for case in build_cases(images, 0, (family,)):
            clean = case.clean.astype(np.float64)
            restored = restore_with_model(restorer, case, {"seed": 0})
            for name, image in (("degraded", case.upsampled), ("model", restored)):
                image = image.astype(np.float64)
                error = ((image - clean) ** 2).mean(axis=-1)
                channel_error = ((ycbcr(image) - ycbcr(clean)) ** 2).mean(axis=(0, 1))
                shares = np.round(channel_error / channel_error.sum(), 2)
                print(f"{family:10s} {case.image:16s} {name:9s} PSNR {10 * np.log10(1 / error.mean()):6.2f}  "
                      f"boundary/inner {boundary_over_inner(error):5.2f}  Y/Cb/Cr shares {shares}  {case.prompt}")


if __name__ == "__main__":
    main()

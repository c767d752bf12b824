"""Regenerate the bundled example: a 256x256 centre crop of scikit-image's `chelsea` (a held-out image: the
tiny model never trained on it), degraded by the project's own pipeline with a known restoration prompt.

    python examples/make_examples.py      # needs scikit-image (the `dev` extra)
"""

from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

from spire_rt.degrade import degrade_explicit

HERE = Path(__file__).resolve().parent
SIZE = 256


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[top : top + size, left : left + size]


def main() -> None:
    clean = centre_crop(data.chelsea(), SIZE).astype(np.float32) / 255
    degraded, params = degrade_explicit(clean, noise=0.10, seed=0)
    Image.fromarray(np.round(clean * 255).astype(np.uint8)).save(HERE / "chelsea_clean.png")
    Image.fromarray(np.round(degraded * 255).astype(np.uint8)).save(HERE / "chelsea_noisy.png")
    (HERE / "chelsea_noisy.txt").write_text(f"{params.prompt()}\n")
    print(params.prompt())


if __name__ == "__main__":
    main()

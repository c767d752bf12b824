"""VAE reconstruction PSNR of the validation photographs' 256x256 centre crops, for model folders.

    python reconstruction.py MODEL_FOLDER...
"""

import sys

import numpy as np
import torch

from spire_rt.evaluation.benchmark import centre_crop
from spire_rt.models.spire_model import load_model
from spire_rt.training.data import VALIDATION, load_skimage_image
from spire_rt.training.recipe import psnr

torch.set_num_threads(1)
for folder in sys.argv[1:]:
    vae = load_model(folder).vae.float()
    values = []
    with torch.no_grad():
        for name in VALIDATION:
            x = torch.from_numpy(centre_crop(load_skimage_image(name))).permute(2, 0, 1)[None]
            decoded = ((vae.decode(vae.encode(x * 2 - 1).latent_dist.mean).sample + 1) / 2).clamp(0, 1)
            values.append(psnr(x[0].permute(1, 2, 0).numpy(), decoded[0].permute(1, 2, 0).numpy()))
    print(folder, [round(v, 2) for v in values], "mean", round(float(np.mean(values)), 2))

"""Where does a family's error come from: the latent the adaptor lands on, or the decoder that turns it into pixels?

For the validation photographs' benchmark cases (eval's own degradations), one ensemble member, no colour fix:
  degraded    the input, upsampled
  decode_y    the decoder (with its fidelity branch) fed E(y): the degraded image's own latent, no adaptor
  model       the decoder fed the latent the model's default restoration lands on (Landings)
  oracle      the decoder fed E(clean), the clean crop's latent, with y to the branch: the most a better
              landing could give through this decoder
PSNR in dB, means over the images.   python latent_probe.py MODEL_FOLDER [FAMILY ...]
"""

import sys

import numpy as np
import torch

from spire_rt.evaluation.benchmark import build_cases
from spire_rt.evaluation.cli import load_images
from spire_rt.models.networks import VaeDecoderNet, VaeEncoderNet
from spire_rt.models.spire_model import load_model
from spire_rt.training.recipe import Landings, psnr

model = load_model(sys.argv[1])
families = tuple(sys.argv[2:]) or ("dejpeg_20", "denoise_0.10", "mixed")
encoder, decoder = VaeEncoderNet(model.vae).eval(), VaeDecoderNet(model.vae, model.fidelity).eval()
landings = Landings(model, torch.device("cpu"))


def image(array):
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def pixels(decoded):
    return ((decoded[0] + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy()


rows = {}
torch.set_grad_enabled(False)
for case in build_cases(load_images("skimage-validation"), seed=0, families=families):
    y, clean = image(case.upsampled), image(case.clean)
    y_image = y * 2 - 1
    scores = {
        "degraded": psnr(case.clean, case.upsampled),
        "decode_y": psnr(case.clean, pixels(decoder(encoder(y_image), y_image))),
        "model": psnr(case.clean, pixels(decoder(landings(y, [case.prompt], torch.Generator().manual_seed(0)),
                                                  y_image))),
        "oracle": psnr(case.clean, pixels(decoder(encoder(clean * 2 - 1), y_image))),
    }
    rows.setdefault(case.family, []).append(scores)
    print(case.image, case.family, {k: round(v, 2) for k, v in scores.items()}, flush=True)

for family, scores in rows.items():
    means = {key: float(np.mean([s[key] for s in scores])) for key in scores[0]}
    print(f"{family:14s} " + "  ".join(f"{k} {v:6.2f}" for k, v in means.items()))

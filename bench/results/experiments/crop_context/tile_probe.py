"""Does the adaptor and UNet restore worse at 256x256 than at the 64-pixel crops it trained on?

For the validation photographs' benchmark cases (eval's own degradations), one ensemble member, no colour fix, the
same decoder and fidelity branch fed the whole image's latent each time; only the landing changes:
  full      the model's landing for the whole 256x256 image (what the runtime does)
  tiles T   each TxT tile's landing found on its own (its own E(y), the adaptor seeing only that tile), tiles
            every T/2 pixels over the image padded by T/4 (reflected), and only each tile's central half kept: the
            kept halves cover the image once, each with T/4 of context on every side, so there are no tile edges
            in what is kept, only the seams where one tile's landing meets the next
If tiles of 64 (what training saw) beat the whole image, the model loses by seeing more context than it trained
on, and training at larger crops is worth its cost; if they lose, context helps it and a larger crop may too.
PSNR in dB, means over the images.   python tile_probe.py MODEL_FOLDER [FAMILY ...]
"""

import sys

import numpy as np
import torch

from spire_rt.evaluation.benchmark import FAMILIES, build_cases
from spire_rt.evaluation.cli import load_images
from spire_rt.models.networks import VaeDecoderNet
from spire_rt.models.spire_model import load_model
from spire_rt.training.recipe import Landings, psnr

TILES = (64, 128)
model = load_model(sys.argv[1])
families = tuple(sys.argv[2:]) or tuple(FAMILIES)
decoder = VaeDecoderNet(model.vae, model.fidelity).eval()
landings = Landings(model, torch.device("cpu"))


def image(array):
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def pixels(decoded):
    return ((decoded[0] + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy()


def land(y, prompt):
    return landings(y, [prompt], torch.Generator().manual_seed(0))


def tiled_landing(y, prompt, tile):
    _, _, height, width = y.shape
    stride, margin = tile // 2, tile // 4
    padded = torch.nn.functional.pad(y, (margin,) * 4, mode="reflect")
    keep = slice(margin // 2, (margin + stride) // 2)  # the central half, in the latent (half the pixels' side)
    rows = []
    for top in range(0, height, stride):
        rows.append(torch.cat([land(padded[..., top:top + tile, left:left + tile], prompt)[..., keep, keep]
                               for left in range(0, width, stride)], dim=3))
    return torch.cat(rows, dim=2)


rows = {}
torch.set_grad_enabled(False)
for case in build_cases(load_images("skimage-validation"), seed=0, families=families):
    y = image(case.upsampled)
    y_image = y * 2 - 1
    scores = {"degraded": psnr(case.clean, case.upsampled),
              "full": psnr(case.clean, pixels(decoder(land(y, case.prompt), y_image)))}
    for tile in TILES:
        scores[f"tiles{tile}"] = psnr(case.clean, pixels(decoder(tiled_landing(y, case.prompt, tile), y_image)))
    rows.setdefault(case.family, []).append(scores)
    print(case.image, case.family, {k: round(v, 2) for k, v in scores.items()}, flush=True)

for family, scores in rows.items():
    means = {key: float(np.mean([s[key] for s in scores])) for key in scores[0]}
    print(f"{family:14s} " + "  ".join(f"{k} {v:6.2f}" for k, v in means.items()))

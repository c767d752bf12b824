"""Where the model's JPEG error sits: per 8x8-block phase and per YCbCr channel, on the validation photographs."""
import numpy as np
from spire_rt.evaluation.cli import load_images
from spire_rt.evaluation.benchmark import build_cases, restore_with_model
from spire_rt.pipeline import Restorer

def ycc(img):
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return np.stack([y, (b - y) * 0.564, (r - y) * 0.713], -1)

restorer = Restorer.from_pretrained("tiny")
images = load_images("skimage-validation")
for family in ("dejpeg_20", "mixed"):
    cases = build_cases(images, 0, (family,))
    for case in cases:
        out = restore_with_model(restorer, case, {"seed": 0})
        clean = case.clean.astype(np.float64)
        for name, img in (("degraded", case.upsampled), ("model", out)):
            err = (img.astype(np.float64) - clean) ** 2
            e_ycc = (ycc(img.astype(np.float64)) - ycc(clean)) ** 2
            rows = np.arange(err.shape[0]) % 8
            cols = np.arange(err.shape[1]) % 8
            e = err.mean(-1)
            edge = e[(rows == 0) | (rows == 7)].mean() + e[:, (cols == 0) | (cols == 7)].mean()
            inner = e[(rows >= 2) & (rows <= 5)][:, (cols >= 2) & (cols <= 5)].mean()
            psnr = 10 * np.log10(1 / e.mean())
            print(f"{family:10s} {case.image:16s} {name:9s} psnr {psnr:6.2f}  boundary/inner mse {edge/2/inner:5.2f}"
                  f"  Y/Cb/Cr mse share {np.round(e_ycc.mean((0,1))/e_ycc.mean((0,1)).sum(),2)}  {case.prompt}")

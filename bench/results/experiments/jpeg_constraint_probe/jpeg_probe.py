"""Probe: does projecting the shipped model's dejpeg output onto JPEG's luma quantisation box raise PSNR?
And how well does the quantisation fit tell an untouched JPEG decode from anything else?"""
import io
import sys

import numpy as np
from PIL import Image
from scipy.fft import dctn, idctn

from spire_rt.evaluation.benchmark import build_cases
from spire_rt.evaluation.cli import load_images
from spire_rt.evaluation.metrics import psnr
from spire_rt.pipeline import Restorer

STD_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], float).reshape(8, 8)


def table(q):
    scale = 5000 / q if q < 50 else 200 - 2 * q
    return np.clip(np.floor((STD_LUMA * scale + 50) / 100), 1, 255)


def pil_table(q):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buf, format="JPEG", quality=q)
    return np.array(Image.open(buf).quantization[0], float).reshape(8, 8)


def luma(rgb):  # [0,1] RGB -> JFIF Y on 0..255
    return (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114) * 255


def blocks(y):
    h, w = y.shape[0] // 8 * 8, y.shape[1] // 8 * 8
    b = y[:h, :w].reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3)
    return dctn(b - 128, axes=(2, 3), norm="ortho"), (h, w)


def fit(rgb, q):
    c, _ = blocks(luma(rgb))
    r = c / table(q)
    return float(np.abs(r - np.round(r)).mean())


def project(restored, degraded, q):
    t = table(q)
    c_in, (h, w) = blocks(luma(degraded))
    k = np.round(c_in / t)
    c_out, _ = blocks(luma(restored))
    c_new = np.clip(c_out, (k - 0.5) * t, (k + 0.5) * t)
    delta = idctn(c_new - c_out, axes=(2, 3), norm="ortho").transpose(0, 2, 1, 3).reshape(h, w) / 255
    out = restored.copy()
    out[:h, :w] += delta[..., None]
    return np.clip(out, 0, 1)


for q in (20, 50, 75, 95):
    print("table", q, "matches PIL:", np.array_equal(table(q), pil_table(q)))

which = sys.argv[1] if len(sys.argv) > 1 else "skimage-validation"
images = load_images(which)
cases = build_cases(images, families=("dejpeg_20", "mixed"))
restorer = Restorer.from_pretrained("tiny")
for case in cases:
    print(case.image, case.family, case.prompt, f"fit@20 {fit(case.model_input, 20):.3f}")
    if case.family != "dejpeg_20":
        continue
    restored = np.asarray(restorer(case.model_input, restore=case.prompt, seed=0), np.float32) / 255
    projected = project(restored, case.model_input, 20)
    print(f"   degraded {psnr(case.clean, case.upsampled):.3f} model {psnr(case.clean, restored):.3f} "
          f"projected {psnr(case.clean, projected):.3f}  | fit of clean {fit(case.clean, 20):.3f}, "
          f"of model {fit(restored, 20):.3f}")
# the fit for untouched decodes at several qualities, and for a JPEG then resized
clean = next(iter(images.values()))[:256, :256]
for q in (20, 40, 60, 75, 90, 95):
    buf = io.BytesIO()
    Image.fromarray(np.round(clean * 255).astype(np.uint8)).save(buf, format="JPEG", quality=q)
    dec = np.asarray(Image.open(buf).convert("RGB"), np.float32) / 255
    shifted = dec[1:, 1:]
    print("q", q, f"fit own {fit(dec, q):.3f}  fit at q20 {fit(dec, 20):.3f}  shifted by 1 {fit(shifted, q):.3f}  "
          f"clean {fit(clean, q):.3f}")

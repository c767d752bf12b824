"""The restoration benchmark of `spire-rt eval`: fixed degradations of 256x256 centre crops, three restorers.

For every image and family it scores, against the clean crop, (1) the degraded input, bicubic-upsampled to the
clean size where it was downscaled; (2) a classical baseline given the same information as the prompt; (3) the
model through `spire_rt.pipeline.Restorer`, the product's own path.

    family          degradation (spire_rt.degrade)          prompt                    classical baseline
    denoise_0.10    colour Gaussian noise, sigma 0.10       Denoise with sigma 0.10   non-local means, sigma 0.10
    deblur_2.0      Gaussian blur, sigma 2.0                Deblur with sigma 2.0     Richardson-Lucy, 30 iterations
    dejpeg_20       JPEG quality 20                         Dejpeg with quality 20    TV (Chambolle), weight 0.04
    upsample_2x     bicubic downscale by 2                  Upsample to 2x            bicubic
    mixed           the random two-stage pipeline (seeded;  its full prompt           the chain above, per clause
                    the first draw stating >= 2 kinds)
    mixed_blind     the same images                         Remove all degradation    NLM at an estimated sigma

The blind family hands the model the degraded image already resized to the clean size (blind mode does not
upsample), as training does. `mixed_draws` N > 1 scores the first N such draws per image in both mixed families
(each case records its `draw`, 1 .. N): one draw per photograph is the issue's benchmark, more draws make a
comparison of two models on a few photographs less a matter of which draw each photograph got.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..degrade import degrade, degrade_explicit
from ..prompts import BLIND_PROMPT, CLAUSES, parse_restoration_prompt
from ..staging import staged_file
from .metrics import as_float, psnr, ssim

CROP = 256
FAMILIES = {
    "denoise_0.10": {"noise": 0.10},
    "deblur_2.0": {"blur": 2.0},
    "dejpeg_20": {"jpeg": 20},
    "upsample_2x": {"downscale": 2.0},
    "mixed": None,
    "mixed_blind": None,
}
METHODS = ("degraded", "baseline", "model")
RESULT_FILES = ("results.json", "results.md")  # what write_results writes; save_grids adds grid_file(family)
MIXED_KINDS = 2  # a "mixed" case states at least this many kinds of degradation in its prompt
MIXED_FAMILIES = ("mixed", "mixed_blind")  # the families scored on the two-stage draws
RL_ITERATIONS = 30
TV_WEIGHT = 0.04


@dataclass
class Case:
    image: str
    family: str
    clean: np.ndarray  # CROP x CROP x 3
    model_input: np.ndarray  # what the pipeline is given (the small image where it was downscaled)
    upsampled: np.ndarray  # the degraded image at the clean size
    prompt: str
    draw: int = 1  # which of the image's mixed draws (1 for every other family)


def centre_crop(image: np.ndarray, size: int = CROP) -> np.ndarray:
    """The centre size x size crop; a smaller image is first enlarged (bicubic) so its short side is `size`."""
    height, width = image.shape[:2]
    if min(height, width) < size:
        scale = size / min(height, width)
        pil = Image.fromarray(np.round(image * 255).astype(np.uint8))
        pil = pil.resize((max(size, round(width * scale)), max(size, round(height * scale))),
                         Image.Resampling.BICUBIC)
        image = np.asarray(pil, np.float32) / 255.0
        height, width = image.shape[:2]
    y0, x0 = (height - size) // 2, (width - size) // 2
    return np.ascontiguousarray(image[y0:y0 + size, x0:x0 + size], dtype=np.float32)


def upsample_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The pipeline's own resize (bicubic, clamped), so every method sees the same upsampled input."""
    from ..pipeline import resize

    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    return resize(tensor, size)[0].permute(1, 2, 0).numpy()


def build_cases(images: dict[str, np.ndarray], seed: int = 0, families=tuple(FAMILIES),
                mixed_draws: int = 1) -> list[Case]:
    """Every (image, family) case, with seeds fixed by `seed` and the image's index; `mixed_draws` cases per image
    in the mixed families."""
    if mixed_draws < 1:
        raise ValueError(f"mixed_draws must be 1 or more, got {mixed_draws}")
    mixed_families = [family for family in families if family in MIXED_FAMILIES]
    cases = []
    for index, (name, image) in enumerate(sorted(images.items())):
        clean = centre_crop(image)
        case_seed = seed * 1000 + index
        draws = mixed_degradations(clean, case_seed, mixed_draws) if mixed_families else []
        for family in families:
            if family in mixed_families:
                for draw, (degraded, params) in enumerate(draws, start=1):
                    upsampled = upsample_to(degraded, clean.shape[:2])
                    if family == "mixed_blind":
                        cases.append(Case(name, family, clean, upsampled, upsampled, BLIND_PROMPT, draw))
                    else:
                        cases.append(Case(name, family, clean, degraded, upsampled, str(params.prompt()), draw))
                continue
            degraded, params = degrade_explicit(clean, seed=case_seed, **FAMILIES[family])
            upsampled = upsample_to(degraded, clean.shape[:2])
            cases.append(Case(name, family, clean, degraded, upsampled, str(params.prompt())))
    return cases


def mixed_degradation(clean: np.ndarray, case_seed: int):
    """The first two-stage draw (seeds case_seed + 100, + 10100, ...) whose prompt states at least MIXED_KINDS
    kinds of degradation: the pipeline sometimes draws a single light one ("Dejpeg with quality 90"), which
    the single-kind families already cover."""
    return mixed_degradations(clean, case_seed, 1)[0]


def mixed_degradations(clean: np.ndarray, case_seed: int, count: int, attempts_each: int = 100) -> list:
    """The first `count` such draws, in seed order (so the first is mixed_degradation's)."""
    found = []
    for attempt in range(attempts_each * count):
        degraded, params = degrade(clean, seed=case_seed + 100 + 10_000 * attempt)
        prompt = params.prompt()
        if sum(getattr(prompt, spec.field) is not None for spec in CLAUSES) >= MIXED_KINDS:
            found.append((degraded, params))
            if len(found) == count:
                return found
    raise RuntimeError(f"only {len(found)} two-stage draws with {MIXED_KINDS} kinds of degradation in "
                       f"{attempts_each * count} seeds, of {count} asked for")


# --- classical baselines ------------------------------------------------------------------------------------


def nlm(image: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    return denoise_nl_means(image, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True,
                            channel_axis=-1).astype(np.float32)


def richardson_lucy(image: np.ndarray, sigma: float, iterations: int = RL_ITERATIONS) -> np.ndarray:
    """Per-channel Richardson-Lucy with the stated Gaussian PSF, on a reflect-padded image (no edge ringing)."""
    from skimage.restoration import richardson_lucy as rl

    radius = max(1, math.ceil(4 * sigma))
    axis = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel_1d = np.exp(-0.5 * (axis / sigma) ** 2)
    psf = np.outer(kernel_1d, kernel_1d)
    psf /= psf.sum()
    padded = np.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    channels = [rl(padded[..., c].astype(np.float64), psf, num_iter=iterations) for c in range(3)]
    restored = np.stack(channels, axis=-1)[radius:-radius, radius:-radius]
    return np.clip(restored, 0, 1).astype(np.float32)


def estimate_noise_sigma(image: np.ndarray) -> float:
    """Immerkaer's estimate of white-noise sigma (1996, "Fast noise variance estimation"), mean over channels."""
    from scipy.ndimage import convolve

    mask = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64)
    height, width = image.shape[:2]
    sigmas = [np.abs(convolve(image[..., c].astype(np.float64), mask)[1:-1, 1:-1]).sum()
              * math.sqrt(math.pi / 2) / (6 * (height - 2) * (width - 2)) for c in range(image.shape[2])]
    return float(np.mean(sigmas))


def tv_deblock(image: np.ndarray, weight: float = TV_WEIGHT) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    return denoise_tv_chambolle(image, weight=weight, channel_axis=-1).astype(np.float32)


def classical_baseline(case: Case) -> np.ndarray:
    """Undo the stated degradations in reverse order: deblock or denoise, upsample, deblur."""
    size = case.clean.shape[:2]
    if case.prompt == BLIND_PROMPT:
        sigma = estimate_noise_sigma(case.upsampled)
        return nlm(case.upsampled, sigma) if sigma > 0.005 else case.upsampled
    prompt = parse_restoration_prompt(case.prompt)
    x = case.model_input
    if prompt.denoise is not None and prompt.denoise > 0:
        x = nlm(x, float(prompt.denoise))
    elif prompt.dejpeg is not None:
        x = tv_deblock(x)
    x = upsample_to(x, size)
    if prompt.deblur is not None and prompt.deblur > 0:
        x = richardson_lucy(x, float(prompt.deblur))
    return x


# --- running it ---------------------------------------------------------------------------------------------


def restore_with_model(restorer, case: Case, options: dict) -> np.ndarray:
    restored = as_float(restorer(case.model_input, restore=case.prompt, **options))
    if restored.shape[:2] != case.clean.shape[:2]:  # "Upsample to 2.3x" can land a pixel off the clean size
        restored = upsample_to(restored, case.clean.shape[:2])
    return restored


def run_benchmark(restorer, images: dict[str, np.ndarray], options: dict, seed: int = 0,
                  families=tuple(FAMILIES), progress=None, mixed_draws: int = 1
                  ) -> tuple[list[dict], dict[str, dict[str, np.ndarray]]]:
    """Scores every case; returns the per-case records and the output images (for the grids)."""
    records, outputs = [], {}
    cases = build_cases(images, seed, families, mixed_draws)
    for number, case in enumerate(cases):
        results = {"degraded": case.upsampled, "baseline": classical_baseline(case),
                   "model": restore_with_model(restorer, case, options)}
        seconds = restorer.last_run.timings["total"] if restorer.last_run else None
        record = {"image": case.image, "family": case.family, "prompt": case.prompt, "model_seconds": seconds}
        if case.family in MIXED_FAMILIES:
            record["draw"] = case.draw
        for method, image in results.items():
            record[method] = {"psnr": psnr(case.clean, image), "ssim": ssim(case.clean, image)}
        records.append(record)
        outputs[(case.family, case.image, case.draw)] = {**results, "ground_truth": case.clean}
        if progress is not None:
            progress(number + 1, len(cases))
    return records, outputs


def summarise(records: list[dict]) -> dict[str, dict]:
    """Per family: the mean PSNR/SSIM of each method and the model's gains over the input and the baseline."""
    summary = {}
    for family in dict.fromkeys(r["family"] for r in records):
        rows = [r for r in records if r["family"] == family]
        entry = {method: {metric: float(np.mean([r[method][metric] for r in rows])) for metric in ("psnr", "ssim")}
                 for method in METHODS}
        entry["model_gain_db"] = entry["model"]["psnr"] - entry["degraded"]["psnr"]
        entry["model_minus_baseline_db"] = entry["model"]["psnr"] - entry["baseline"]["psnr"]
        entry["images"] = len({r["image"] for r in rows})
        entry["cases"] = len(rows)
        summary[family] = entry
    return summary


def quoted_gains(summary: dict[str, dict]) -> tuple[dict[str, float], float]:
    """Each family's model gain rounded to 0.01 dB, and the mean of those: how every ship rule quotes a model
    (bench/score_candidate.sh; 2.545 dB for a model whose unrounded mean was 2.5446)."""
    gains = {family: round(values["model_gain_db"], 2) for family, values in summary.items()}
    return gains, sum(gains.values()) / len(gains)


def markdown_table(summary: dict[str, dict]) -> str:
    header = ("| family | degraded PSNR / SSIM | baseline PSNR / SSIM | model PSNR / SSIM | model gain (dB) "
              "| model - baseline (dB) |")
    lines = [header, "|---|---|---|---|---|---|"]
    for family, entry in summary.items():
        cells = [f"{entry[m]['psnr']:.2f} / {entry[m]['ssim']:.3f}" for m in METHODS]
        lines.append(f"| {family} | {' | '.join(cells)} | {entry['model_gain_db']:+.2f} "
                     f"| {entry['model_minus_baseline_db']:+.2f} |")
    return "\n".join(lines) + "\n"


def save_grids(outputs: dict, folder: Path, tile: int = 128) -> list[Path]:
    """One PNG per family: a row per image, columns degraded | baseline | model | ground truth (centre tiles)."""
    paths = []
    for family in dict.fromkeys(key[0] for key in outputs):
        rows = []
        for (fam, _image, _draw), images in outputs.items():
            if fam != family:
                continue
            tiles = [centre_crop(images[c], tile) for c in ("degraded", "baseline", "model", "ground_truth")]
            rows.append(np.concatenate(tiles, axis=1))
        grid = np.round(np.clip(np.concatenate(rows, axis=0), 0, 1) * 255).astype(np.uint8)
        path = folder / grid_file(family)
        with staged_file(path) as staging:
            Image.fromarray(grid).save(staging, optimize=True)
        paths.append(path)
    return paths


def grid_file(family: str) -> str:
    return f"grid_{family}.png"


def write_results(folder: Path, records: list[dict], summary: dict, info: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)

    def clean(value):  # JSON has no infinity
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    json_file, markdown_file = RESULT_FILES
    with staged_file(folder / json_file) as staging:
        staging.write_text(json.dumps(clean({**info, "summary": summary, "cases": records}), indent=2) + "\n",
                           encoding="utf-8")
    draws = info.get("mixed_draws", 1)
    setup = (f"Model `{info['model']}`, images: {', '.join(info['images'])} ({CROP}x{CROP} centre crops), "
             f"seed {info['seed']}, options {json.dumps(info['options'])}"
             + (f", {draws} mixed draws per image." if draws > 1 else "."))
    legend = ("Mean PSNR (dB) / SSIM against the clean crop. Degraded: the input, bicubic-upsampled where it was "
              "downscaled. Baseline: classical restoration given the prompt's values (see "
              "spire_rt/evaluation/benchmark.py).")
    header = ["# spire-rt eval", "", setup, "", legend, ""]
    with staged_file(folder / markdown_file) as staging:
        staging.write_text("\n".join(header) + markdown_table(summary), encoding="utf-8")

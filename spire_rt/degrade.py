"""The SPIRE degradation pipeline: training pairs and benchmark inputs (SPIRE.md, "Degradation pipeline").

Two stages, each ``blur -> resize -> noise -> JPEG``, every operation skipped with probability 0.5; the second
stage draws from milder ranges (`STAGE1_RANGES`, `STAGE2_RANGES`). Images are float32 HxWx3 arrays in [0, 1].

Resizing by a factor d maps an H x W image to round(H / d) x round(W / d) (halves round up, at least 1 pixel)
with PIL's antialiased bicubic filter. With d_k the downscale of stage k (1 when skipped), the restoration
prompt states the effective values (SPIRE.md):

    blur      sigma = sqrt(sum_k (sigma_k * prod_{j<k} d_j)^2)   a stage-k pixel spans prod_{j<k} d_j
    upsample  D     = H_in / H_out                               from the rounded sizes actually produced
    noise     n     = sqrt(sum_k n_k^2)                          variances of independent draws add
    jpeg      q     = min_k q_k                                  the harshest quantisation applied

The noise figure is nominal: a later stage's resize, blur and JPEG also smooth the first stage's noise, which
it does not model. Every draw comes from a seeded numpy Generator, so a seed reproduces the image bit for bit.
"""

from __future__ import annotations

import dataclasses
import io
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from spire_rt.prompts import CLAUSES, ClauseSpec, RestorationPrompt

__all__ = [
    "SINGLE_OPERATIONS",
    "STAGE1_RANGES",
    "STAGE2_RANGES",
    "DegradationParams",
    "Sampler",
    "StageParams",
    "StageRanges",
    "apply_degradation",
    "degrade",
    "degrade_explicit",
    "sample_params",
    "sample_single_params",
    "single_operation_shares",
]


@dataclass(frozen=True)
class StageRanges:
    """Where one stage draws its operations from (SPIRE.md table); bounds inclusive."""

    blur_sigma: tuple[float, float]  # Gaussian blur std in this stage's input pixels
    downscale: tuple[float, float]
    noise_sigma: tuple[float, float]  # Gaussian noise std on the [0, 1] scale
    jpeg_quality: tuple[int, int]
    p_skip: float = 0.5  # per operation, the paper's "P(skip)=0.5"
    p_grey: float = 0.4  # the same noise on all three channels


STAGE1_RANGES = StageRanges(
    blur_sigma=(0.2, 6.0), downscale=(1.0, 4.0), noise_sigma=(0.01, 0.25), jpeg_quality=(20, 95)
)
STAGE2_RANGES = StageRanges(
    blur_sigma=(0.2, 1.5), downscale=(1.0, 1.5), noise_sigma=(0.01, 0.10), jpeg_quality=(30, 95)
)
SINGLE_OPERATIONS = ("blur", "downscale", "noise", "jpeg")  # sample_single_params' operations, in draw order


@dataclass(frozen=True)
class StageParams:
    """One stage's draws; None means the operation is skipped."""

    blur_sigma: float | None = None
    downscale: float | None = None
    noise_sigma: float | None = None
    noise_grey: bool = False
    jpeg_quality: int | None = None

    def __post_init__(self) -> None:
        _set(self, "blur_sigma", _check_real(self.blur_sigma, "blur sigma", lo=0.0))
        _set(self, "downscale", _check_real(self.downscale, "downscale factor", lo=1.0))
        _set(self, "noise_sigma", _check_real(self.noise_sigma, "noise sigma", lo=0.0))
        _set(self, "noise_grey", bool(self.noise_grey))
        _set(self, "jpeg_quality", _check_quality(self.jpeg_quality))


@dataclass(frozen=True)
class DegradationParams:
    """Everything that produced a degraded image: the stages' draws, the sizes, the seed."""

    stages: tuple[StageParams, ...]
    input_size: tuple[int, int]  # (H, W) of the clean image
    output_size: tuple[int, int]  # (H, W) of the degraded image
    seed: int | None = None

    def __post_init__(self) -> None:
        _set(self, "stages", tuple(self.stages))
        _set(self, "input_size", _check_size(self.input_size))
        _set(self, "output_size", _check_size(self.output_size))
        if self.output_size != _output_size(self.input_size, self.stages):
            raise ValueError(
                f"output_size {self.output_size} does not follow from input_size {self.input_size} "
                f"and the stages' downscales (expected {_output_size(self.input_size, self.stages)})"
            )

    @property
    def blur_sigma(self) -> float | None:
        """Combined blur std in clean-image (= restored output) pixels."""
        terms = []
        pixel = 1.0  # width of the current stage's pixel in clean-image pixels
        for stage in self.stages:
            if stage.blur_sigma is not None:
                terms.append(stage.blur_sigma * pixel)
            if stage.downscale is not None:
                pixel *= stage.downscale
        return math.hypot(*terms) if terms else None

    @property
    def downscale(self) -> float | None:
        """Total downscale H_in / H_out; None when no resize changed the size."""
        if self.input_size == self.output_size:
            return None
        return self.input_size[0] / self.output_size[0]

    @property
    def noise_sigma(self) -> float | None:
        """Combined noise std, sqrt(sum n_k^2)."""
        sigmas = [s.noise_sigma for s in self.stages if s.noise_sigma is not None]
        return math.hypot(*sigmas) if sigmas else None

    @property
    def jpeg_quality(self) -> int | None:
        """The lowest JPEG quality applied."""
        qualities = [s.jpeg_quality for s in self.stages if s.jpeg_quality is not None]
        return min(qualities) if qualities else None

    def prompt(self) -> RestorationPrompt:
        """The restoration prompt stating the effective values at the grammar's precision (SPIRE.md).

        Values above the grammar's range are clamped to its top: two stacked blurs reach
        sqrt(6.0^2 + (1.5 * 4)^2) = 8.5 clean pixels, past "Deblur with sigma 8.0". A clause whose value
        rounds to nothing (blur 0.0, "Upsample to 1x", noise 0.00) is left out, unless that would leave no
        clause for a degraded image: then the clauses are kept at the nearest value the grammar can state.
        The blind prompt comes back only when no operation changed the image.
        """
        effective = {
            "deblur": self.blur_sigma,
            "upsample": self.downscale,
            "denoise": self.noise_sigma,
            "dejpeg": self.jpeg_quality,
        }
        present = {spec: v for spec in CLAUSES if (v := effective[spec.field]) is not None}
        stated = {spec: _state(spec, v) for spec, v in present.items()}
        kept = {spec: q for spec, q in stated.items() if q > _NO_OP.get(spec.field, -1)}
        if not kept:
            kept = {spec: max(q, float(spec.lo)) for spec, q in stated.items()}
        return RestorationPrompt(**{spec.field: q for spec, q in kept.items()})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable record: the draws, the sizes, the seed, the effective values and the prompt."""
        return {
            "seed": self.seed,
            "input_size": list(self.input_size),
            "output_size": list(self.output_size),
            "stages": [dataclasses.asdict(stage) for stage in self.stages],
            "effective": {
                "blur_sigma": self.blur_sigma,
                "downscale": self.downscale,
                "noise_sigma": self.noise_sigma,
                "jpeg_quality": self.jpeg_quality,
            },
            "prompt": str(self.prompt()),
        }


# The value at which a clause says nothing; JPEG at any quality still quantises, so it has none.
_NO_OP = {"deblur": 0.0, "upsample": 1.0, "denoise": 0.0}


def _state(spec: ClauseSpec, value: float) -> float:
    """`value` clamped to the top of the clause's range and rounded to its precision (never below zero)."""
    q = spec.quantize(min(value, float(spec.hi)))
    return float(q) if q is not None else 0.0  # None only for a value that rounds below the range's bottom


# --- sampling -----------------------------------------------------------------------------------------------


def sample_params(rng: np.random.Generator, input_size: tuple[int, int]) -> DegradationParams:
    """Draw both stages for a clean image of size (H, W); `seed` is left None for the caller to fill."""
    input_size = _check_size(input_size)
    stages = (_sample_stage(rng, STAGE1_RANGES), _sample_stage(rng, STAGE2_RANGES))
    return DegradationParams(stages, input_size, _output_size(input_size, stages), seed=None)


def sample_single_params(rng: np.random.Generator, input_size: tuple[int, int],
                         weights: tuple[float, ...] | None = None) -> DegradationParams:
    """One operation (blur, downscale, noise or JPEG: SINGLE_OPERATIONS) from stage 1's range, the rest skipped;
    equally likely, or in proportion to `weights` (one per operation, in that order).

    Not part of SPIRE's distribution, where a lone operation is 1 draw in 32: a training mixture adds these so
    a small model also learns to undo one well-stated degradation precisely (what a benchmark family asks)."""
    input_size = _check_size(input_size)
    ranges = STAGE1_RANGES
    if weights is None:
        operation = int(rng.integers(len(SINGLE_OPERATIONS)))  # the draw runs made before weights existed
    else:
        operation = int(rng.choice(len(SINGLE_OPERATIONS), p=single_operation_shares(weights)))
    draws: dict[str, Any] = {}
    if operation == 0:
        draws["blur_sigma"] = float(rng.uniform(*ranges.blur_sigma))
    elif operation == 1:
        draws["downscale"] = float(rng.uniform(*ranges.downscale))
    elif operation == 2:
        draws["noise_sigma"] = float(rng.uniform(*ranges.noise_sigma))
        draws["noise_grey"] = _grey_coin(rng, ranges)
    else:
        draws["jpeg_quality"] = _jpeg_quality(rng, ranges)
    stages = (StageParams(**draws),)
    return DegradationParams(stages, input_size, _output_size(input_size, stages), seed=None)


def single_operation_shares(weights: tuple[float, ...]) -> np.ndarray:
    """`weights` (one per SINGLE_OPERATIONS entry, none negative, not all zero) as shares summing to 1."""
    values = np.asarray(weights, dtype=np.float64)
    if values.shape != (len(SINGLE_OPERATIONS),) or not np.all(np.isfinite(values)) or np.any(values < 0) \
            or values.sum() <= 0:
        raise ValueError(f"single-operation weights must be {len(SINGLE_OPERATIONS)} numbers (for "
                         f"{', '.join(SINGLE_OPERATIONS)}), none negative and not all zero; got {list(weights)}")
    return values / values.sum()


def _sample_stage(rng: np.random.Generator, ranges: StageRanges) -> StageParams:
    # The draw order is fixed (skip coin, then value, op by op) so a seed always means the same parameters.
    blur = None if rng.random() < ranges.p_skip else float(rng.uniform(*ranges.blur_sigma))
    downscale = None if rng.random() < ranges.p_skip else float(rng.uniform(*ranges.downscale))
    noise = None if rng.random() < ranges.p_skip else float(rng.uniform(*ranges.noise_sigma))
    grey = noise is not None and _grey_coin(rng, ranges)
    quality = None if rng.random() < ranges.p_skip else _jpeg_quality(rng, ranges)
    return StageParams(blur, downscale, noise, grey, quality)


def _grey_coin(rng: np.random.Generator, ranges: StageRanges) -> bool:
    return bool(rng.random() < ranges.p_grey)


def _jpeg_quality(rng: np.random.Generator, ranges: StageRanges) -> int:
    return int(rng.integers(ranges.jpeg_quality[0], ranges.jpeg_quality[1], endpoint=True))


# --- applying -----------------------------------------------------------------------------------------------


def apply_degradation(image: np.ndarray, params: DegradationParams, rng: np.random.Generator) -> np.ndarray:
    """Run the stages of `params` on `image`; `rng` supplies the noise. Returns float32 in [0, 1]."""
    x = _check_image(image)
    if x.shape[:2] != params.input_size:
        raise ValueError(f"image is {x.shape[:2]} but the parameters were drawn for {params.input_size}")
    for stage in params.stages:
        x = _apply_stage(x, stage, rng)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def _apply_stage(x: np.ndarray, stage: StageParams, rng: np.random.Generator) -> np.ndarray:
    if stage.blur_sigma is not None:
        # sigma 0 on the channel axis: each channel is blurred on its own.
        x = gaussian_filter(x, sigma=(stage.blur_sigma, stage.blur_sigma, 0.0), mode="reflect", truncate=4.0)
    if stage.downscale is not None:
        x = _resize(x, _resized_size(x.shape[:2], stage.downscale))
    if stage.noise_sigma is not None:
        channels = 1 if stage.noise_grey else 3  # grey noise broadcasts one draw over R, G and B
        noise = rng.standard_normal((*x.shape[:2], channels), dtype=np.float32)
        x = np.clip(x + np.float32(stage.noise_sigma) * noise, 0.0, 1.0)
    if stage.jpeg_quality is not None:
        x = _jpeg(x, stage.jpeg_quality)
    return x


def _resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PIL bicubic per channel in float ("F") mode: antialiased when shrinking, and no uint8 rounding."""
    if size == x.shape[:2]:
        return x
    h, w = size
    planes = [Image.fromarray(np.ascontiguousarray(x[..., c], dtype=np.float32)) for c in range(x.shape[2])]
    return np.stack([np.asarray(p.resize((w, h), Image.Resampling.BICUBIC)) for p in planes], axis=-1)


def _jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode through PIL's JPEG (uint8, 4:2:0 chroma) at `quality`."""
    pixels = np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.float32) / np.float32(255.0)


def _resized_size(size: tuple[int, int], downscale: float | None) -> tuple[int, int]:
    if downscale is None:
        return size
    h, w = size
    return _shrink(h, downscale), _shrink(w, downscale)


def _shrink(n: int, downscale: float) -> int:
    # floor(n / d + 1/2): halves round up, unlike Python's round(), which rounds them to even.
    return max(1, math.floor(n / downscale + 0.5))


def _output_size(input_size: tuple[int, int], stages: tuple[StageParams, ...]) -> tuple[int, int]:
    size = input_size
    for stage in stages:
        size = _resized_size(size, stage.downscale)
    return size


# --- entry points -------------------------------------------------------------------------------------------


Sampler = Callable[[np.random.Generator, tuple[int, int]], DegradationParams]


def degrade(image: np.ndarray, seed: int, sampler: Sampler = sample_params) -> tuple[np.ndarray, DegradationParams]:
    """The random two-stage degradation (or `sampler`'s draw, e.g. sample_single_params); the same seed gives
    the same parameters and a bitwise-equal image."""
    seed = _check_seed(seed)
    x = _check_image(image)
    # Separate streams: the parameters for a seed do not depend on how many noise values the image needs.
    params_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    params = dataclasses.replace(sampler(params_rng, x.shape[:2]), seed=seed)
    return apply_degradation(x, params, noise_rng), params


def degrade_explicit(
    image: np.ndarray,
    blur: float | None = None,
    downscale: float | None = None,
    noise: float | None = None,
    jpeg: int | None = None,
    seed: int = 0,
    grey_noise: bool = False,
) -> tuple[np.ndarray, DegradationParams]:
    """One stage with the given values (None skips an operation); `seed` drives the noise only."""
    seed = _check_seed(seed)
    x = _check_image(image)
    stage = StageParams(blur, downscale, noise, grey_noise, jpeg)  # validates
    # Blur 0, downscale 1 and noise 0 change nothing: record them as skipped so no clause states them.
    stage = dataclasses.replace(
        stage,
        blur_sigma=stage.blur_sigma or None,
        downscale=None if stage.downscale == 1.0 else stage.downscale,
        noise_sigma=stage.noise_sigma or None,
        noise_grey=stage.noise_grey and bool(stage.noise_sigma),
    )
    params = DegradationParams((stage,), x.shape[:2], _output_size(x.shape[:2], (stage,)), seed=seed)
    return apply_degradation(x, params, np.random.default_rng(seed)), params


# --- validation ---------------------------------------------------------------------------------------------


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)  # normalising a frozen dataclass in __post_init__


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image must be H x W x 3 (RGB), got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(
            f"image must be float in [0, 1], got dtype {image.dtype} (divide uint8 images by 255)"
        )
    x = image.astype(np.float32)
    if not np.all(np.isfinite(x)) or x.min() < 0.0 or x.max() > 1.0:
        raise ValueError("image values must be finite and in [0, 1]")
    return x


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    if not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) for n in size):
        raise TypeError(f"size must be (H, W) integers, got {size!r}")
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return int(size[0]), int(size[1])


def _check_real(value: float | None, what: str, lo: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number, got {value!r}")
    if not math.isfinite(value) or value < lo:
        raise ValueError(f"{what} must be finite and at least {lo}, got {value!r}")
    return float(value)


def _check_quality(value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"JPEG quality must be an integer, got {value!r}")
    if not 1 <= value <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {value!r}")
    return int(value)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed!r}")
    return int(seed)

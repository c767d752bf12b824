"""The degradation pipeline (SPIRE.md, "Degradation pipeline")."""

from __future__ import annotations

import json
import math
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spire_rt.degrade import (
    STAGE1_RANGES,
    STAGE2_RANGES,
    DegradationParams,
    StageParams,
    apply_degradation,
    degrade,
    degrade_explicit,
    sample_params,
    sample_single_params,
)
from spire_rt.prompts import RestorationPrompt, parse_restoration_prompt

SIZE = (48, 40)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """Smooth structure plus texture, so every operation visibly changes it."""
    y, x = np.mgrid[0 : SIZE[0], 0 : SIZE[1]] / 16.0
    texture = np.random.default_rng(0).random((*SIZE, 3))
    base = 0.5 + 0.25 * np.stack([np.sin(x), np.cos(y), np.sin(x + y)], axis=-1)
    return (0.7 * base + 0.3 * texture).astype(np.float32)


def _high_frequency_energy(x: np.ndarray) -> float:
    return float(np.mean(np.diff(x, axis=0) ** 2) + np.mean(np.diff(x, axis=1) ** 2))


def _stated(value: float | None, places: int, hi: float, no_op: float) -> float | None:
    """What a prompt states: clamped to the grammar's top, rounded half up, omitted when a no-op."""
    if value is None:
        return None
    q = float(Decimal(repr(min(value, hi))).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))
    return None if q <= no_op else q


# --- random two-stage degradation ---------------------------------------------------------------------------


def test_same_seed_gives_bitwise_same_image_and_params(image: np.ndarray) -> None:
    out_a, params_a = degrade(image, seed=1234)
    out_b, params_b = degrade(image.copy(), seed=1234)
    assert out_a.tobytes() == out_b.tobytes()
    assert params_a == params_b and params_a.seed == 1234


def test_different_seeds_differ(image: np.ndarray) -> None:
    results = [degrade(image, seed) for seed in range(4)]
    assert len({repr(params) for _, params in results}) == 4
    assert len({(out.shape, out.tobytes()) for out, _ in results}) == 4


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**63))
def test_prompt_states_the_effective_values(image: np.ndarray, seed: int) -> None:
    out, params = degrade(image, seed)
    assert out.dtype == np.float32 and out.shape == (*params.output_size, 3)
    assert out.min() >= 0.0 and out.max() <= 1.0

    prompt = parse_restoration_prompt(str(params.prompt()))
    assert prompt == params.prompt()
    expected = RestorationPrompt(
        deblur=_stated(params.blur_sigma, 1, 8.0, 0.0),
        upsample=_stated(params.downscale, 1, 8.0, 1.0),
        denoise=_stated(params.noise_sigma, 2, 0.5, 0.0),
        dejpeg=params.jpeg_quality,
    )
    if expected.blind and params.downscale is not None:
        expected = RestorationPrompt(
            upsample=1.0
        )  # a resize rounding to 1.0x, the only change, is still stated
    assert prompt == expected
    no_op = all(
        v is None for v in (params.blur_sigma, params.downscale, params.noise_sigma, params.jpeg_quality)
    )
    assert prompt.blind == no_op


def test_effective_values_combine_the_stages() -> None:
    stages = (
        StageParams(blur_sigma=1.0, downscale=2.0, noise_sigma=0.2, jpeg_quality=80),
        StageParams(blur_sigma=1.5, noise_sigma=0.1, jpeg_quality=25),
    )
    params = DegradationParams(stages, input_size=SIZE, output_size=(24, 20), seed=None)
    assert params.blur_sigma == pytest.approx(math.sqrt(1.0**2 + (1.5 * 2.0) ** 2))  # stage 2 px = 2 clean px
    assert params.downscale == 2.0
    assert params.noise_sigma == pytest.approx(math.hypot(0.2, 0.1))
    assert params.jpeg_quality == 25  # the lowest quality applied
    assert str(params.prompt()) == (
        "Deblur with sigma 3.2; Upsample to 2x; Denoise with sigma 0.22; Dejpeg with quality 25"
    )


def test_prompt_clamps_blur_above_the_grammar() -> None:
    stages = (StageParams(blur_sigma=6.0, downscale=4.0), StageParams(blur_sigma=1.5))
    params = DegradationParams(stages, input_size=SIZE, output_size=(12, 10))
    assert params.blur_sigma == pytest.approx(math.sqrt(72.0))
    assert params.prompt() == RestorationPrompt(deblur=8.0, upsample=4.0)


def test_downscale_is_measured_from_the_rounded_sizes() -> None:
    params = DegradationParams((StageParams(downscale=3.0),), input_size=SIZE, output_size=(16, 13))
    assert params.downscale == 3.0  # 48 / 16, while the width went 40 -> round(13.33) = 13
    small = DegradationParams((StageParams(downscale=1.03),), input_size=SIZE, output_size=(47, 39))
    assert small.prompt() == RestorationPrompt(upsample=1.0)  # the only change, so it is stated
    mixed = DegradationParams(
        (StageParams(downscale=1.03, noise_sigma=0.05),), input_size=SIZE, output_size=(47, 39)
    )
    assert mixed.prompt() == RestorationPrompt(denoise=0.05)  # "Upsample to 1x" says nothing: dropped


def test_stage_draws_respect_the_table() -> None:
    rng = np.random.default_rng(7)
    draws = [sample_params(rng, SIZE) for _ in range(2000)]
    for ranges, k in ((STAGE1_RANGES, 0), (STAGE2_RANGES, 1)):
        stages = [params.stages[k] for params in draws]
        for field in ("blur_sigma", "downscale", "noise_sigma", "jpeg_quality"):
            values = [getattr(s, field) for s in stages if getattr(s, field) is not None]
            lo, hi = getattr(ranges, field)
            assert all(lo <= v <= hi for v in values), field
            assert 0.45 < len(values) / len(stages) < 0.55, field  # P(skip) = 0.5
        qualities = {s.jpeg_quality for s in stages if s.jpeg_quality is not None}
        assert all(isinstance(q, int) for q in qualities) and {lo, hi} <= qualities  # both ends reachable
        noisy = [s for s in stages if s.noise_sigma is not None]
        assert 0.34 < sum(s.noise_grey for s in noisy) / len(noisy) < 0.46  # P(grey) = 0.4
        assert not any(s.noise_grey for s in stages if s.noise_sigma is None)


def test_single_draws_state_one_operation_from_stage_one() -> None:
    rng = np.random.default_rng(3)
    draws = [sample_single_params(rng, SIZE) for _ in range(800)]
    counts = dict.fromkeys(("blur_sigma", "downscale", "noise_sigma", "jpeg_quality"), 0)
    for params in draws:
        (stage,) = params.stages
        present = [field for field in counts if getattr(stage, field) is not None]
        assert len(present) == 1
        field = present[0]
        lo, hi = getattr(STAGE1_RANGES, field)
        assert lo <= getattr(stage, field) <= hi
        counts[field] += 1
    assert all(150 < n < 250 for n in counts.values()), counts  # each operation a quarter of the time


def test_degrade_with_a_sampler_is_seeded_and_states_its_operation(image: np.ndarray) -> None:
    first, params = degrade(image, seed=5, sampler=sample_single_params)
    again, same = degrade(image, seed=5, sampler=sample_single_params)
    assert np.array_equal(first, again) and params == same and len(params.stages) == 1
    stated = parse_restoration_prompt(str(params.prompt()))
    assert sum(value is not None for value in (stated.deblur, stated.upsample, stated.denoise, stated.dejpeg)) == 1


def test_to_dict_is_json(image: np.ndarray) -> None:
    _, params = degrade(image, seed=3)
    record = json.loads(json.dumps(params.to_dict()))
    assert record["seed"] == 3 and record["input_size"] == list(SIZE)
    assert record["output_size"] == list(params.output_size)
    assert record["prompt"] == str(params.prompt())
    assert len(record["stages"]) == 2


def test_apply_degradation_matches_degrade_params(image: np.ndarray) -> None:
    _, params = degrade(image, seed=11)
    out = apply_degradation(image, params, np.random.default_rng(0))
    assert out.shape == (*params.output_size, 3)


# --- explicit single stage ----------------------------------------------------------------------------------


def test_explicit_blur_lowers_high_frequency_energy(image: np.ndarray) -> None:
    out, params = degrade_explicit(image, blur=2.0)
    assert out.shape == image.shape
    assert _high_frequency_energy(out) < 0.2 * _high_frequency_energy(image)
    assert str(params.prompt()) == "Deblur with sigma 2.0"


def test_explicit_downscale_two_halves_the_size(image: np.ndarray) -> None:
    out, params = degrade_explicit(image, downscale=2)
    assert out.shape == (24, 20, 3) and params.output_size == (24, 20)
    assert str(params.prompt()) == "Upsample to 2x"
    assert out.mean() == pytest.approx(image.mean(), abs=0.01)  # resizing keeps the brightness


def test_explicit_noise_has_the_requested_std() -> None:
    flat = np.full((48, 40, 3), 0.5, dtype=np.float32)
    out, params = degrade_explicit(flat, noise=0.1, seed=5)
    assert abs(float(np.std(out - flat)) - 0.1) < 0.01
    assert str(params.prompt()) == "Denoise with sigma 0.10"
    grey, _ = degrade_explicit(flat, noise=0.1, seed=5, grey_noise=True)
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    assert not np.array_equal(out[..., 0], out[..., 1])


def test_explicit_jpeg_reports_its_quality(image: np.ndarray) -> None:
    out, params = degrade_explicit(image, jpeg=30)
    assert params.jpeg_quality == 30 and str(params.prompt()) == "Dejpeg with quality 30"
    assert 0 < np.abs(out - image).mean() < 0.1


def test_explicit_nothing_is_identity_and_blind(image: np.ndarray) -> None:
    out, params = degrade_explicit(image, blur=0, downscale=1.0, noise=0.0)
    assert np.array_equal(out, image)
    assert params.prompt().blind and str(params.prompt()) == "Remove all degradation"


def test_explicit_values_outside_the_grammar_are_clamped_or_kept() -> None:
    flat = np.full((48, 40, 3), 0.5, dtype=np.float32)
    assert degrade_explicit(flat, blur=12.0)[1].prompt() == RestorationPrompt(deblur=8.0)
    assert degrade_explicit(flat, blur=0.01)[1].prompt() == RestorationPrompt(deblur=0.1)
    assert degrade_explicit(flat, blur=0.01, jpeg=90)[1].prompt() == RestorationPrompt(dejpeg=90)


# --- validation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((48, 40), dtype=np.float32),
        np.zeros((48, 40, 4), dtype=np.float32),
        np.zeros((48, 40, 1), dtype=np.float32),
        np.zeros((0, 40, 3), dtype=np.float32),
        np.zeros((48, 40, 3), dtype=np.uint8),
        np.full((48, 40, 3), 1.5, dtype=np.float32),
        np.full((48, 40, 3), -0.1, dtype=np.float32),
        np.full((48, 40, 3), np.nan, dtype=np.float32),
    ],
)
def test_bad_images_raise(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="image"):
        degrade(bad, seed=0)
    with pytest.raises(ValueError, match="image"):
        degrade_explicit(bad, blur=1.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"downscale": 0.5}, "downscale"),
        ({"blur": -1.0}, "blur sigma"),
        ({"blur": float("inf")}, "blur sigma"),
        ({"noise": -0.1}, "noise sigma"),
        ({"jpeg": 0}, "JPEG quality"),
        ({"jpeg": 101}, "JPEG quality"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_values_raise(image: np.ndarray, kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        degrade_explicit(image, **kwargs)


def test_bad_types_raise(image: np.ndarray) -> None:
    with pytest.raises(TypeError, match="JPEG quality"):
        degrade_explicit(image, jpeg=30.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="image"):
        degrade(image.tolist(), seed=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed"):
        degrade(image, seed=1.5)  # type: ignore[arg-type]


def test_params_must_fit_the_image(image: np.ndarray) -> None:
    params = DegradationParams((StageParams(blur_sigma=1.0),), input_size=(32, 32), output_size=(32, 32))
    with pytest.raises(ValueError, match="drawn for"):
        apply_degradation(image, params, np.random.default_rng(0))
    with pytest.raises(ValueError, match="output_size"):
        DegradationParams((StageParams(downscale=2.0),), input_size=SIZE, output_size=SIZE)

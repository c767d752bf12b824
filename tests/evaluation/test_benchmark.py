"""The benchmark's cases, baselines, table and the eval command, on a random tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spire_rt.evaluation import benchmark
from spire_rt.evaluation.metrics import psnr


@pytest.fixture(scope="module")
def photo():
    from spire_rt.training.data import load_skimage_image

    return load_skimage_image("coffee")


def test_cases_are_centre_crops_with_their_prompts(photo):
    cases = benchmark.build_cases({"coffee": photo}, seed=0)
    by_family = {case.family: case for case in cases}
    assert set(by_family) == set(benchmark.FAMILIES)
    assert all(case.clean.shape == (256, 256, 3) and case.upsampled.shape == (256, 256, 3) for case in cases)
    assert by_family["denoise_0.10"].prompt == "Denoise with sigma 0.10"
    assert by_family["deblur_2.0"].prompt == "Deblur with sigma 2.0"
    assert by_family["dejpeg_20"].prompt == "Dejpeg with quality 20"
    assert by_family["upsample_2x"].prompt == "Upsample to 2x"
    assert by_family["upsample_2x"].model_input.shape == (128, 128, 3)
    assert by_family["mixed"].prompt.count(";") >= 1  # at least two kinds of degradation
    assert by_family["mixed_blind"].prompt == "Remove all degradation"
    assert np.array_equal(by_family["mixed_blind"].model_input, by_family["mixed"].upsampled)
    again = benchmark.build_cases({"coffee": photo}, seed=0)
    assert all(np.array_equal(a.model_input, b.model_input) for a, b in zip(cases, again))


def test_mixed_skips_single_kind_draws(photo):
    """Seed 103 draws two JPEG passes only ("Dejpeg with quality 90"): not mixed, so the next draw is used."""
    from spire_rt.degrade import degrade

    clean = benchmark.centre_crop(photo)
    _, single = degrade(clean, seed=103)
    assert str(single.prompt()) == "Dejpeg with quality 90"
    _, params = benchmark.mixed_degradation(clean, case_seed=3)
    assert params.seed == 10_103 and str(params.prompt()).count(";") >= 1


@pytest.mark.parametrize("family", ["denoise_0.10", "deblur_2.0", "dejpeg_20"])
def test_classical_baselines_improve_on_the_input(photo, family):
    case = next(c for c in benchmark.build_cases({"coffee": photo}, families=(family,)))
    restored = benchmark.classical_baseline(case)
    assert restored.shape == case.clean.shape
    assert psnr(case.clean, restored) > psnr(case.clean, case.upsampled)


def test_summary_and_table():
    records = [{"image": "a", "family": "f", "prompt": "p",
                "degraded": {"psnr": 20.0, "ssim": 0.5}, "baseline": {"psnr": 22.0, "ssim": 0.6},
                "model": {"psnr": 26.0, "ssim": 0.8}},
               {"image": "b", "family": "f", "prompt": "p",
                "degraded": {"psnr": 22.0, "ssim": 0.7}, "baseline": {"psnr": 23.0, "ssim": 0.7},
                "model": {"psnr": 25.0, "ssim": 0.9}}]
    summary = benchmark.summarise(records)
    assert summary["f"]["model_gain_db"] == pytest.approx(4.5)
    assert summary["f"]["model_minus_baseline_db"] == pytest.approx(3.0)
    assert "| f | 21.00 / 0.600 | 22.50 / 0.650 | 25.50 / 0.850 | +4.50 | +3.00 |" in benchmark.markdown_table(summary)
    assert summary["f"]["images"] == summary["f"]["cases"] == 2
    two_draws = benchmark.summarise([{**record, "image": "a", "draw": draw} for draw, record in enumerate(records, 1)])
    assert two_draws["f"]["images"] == 1 and two_draws["f"]["cases"] == 2


def test_quoted_gains_round_each_family_before_the_mean():
    summary = {"a": {"model_gain_db": 2.5446}, "b": {"model_gain_db": 1.004}, "c": {"model_gain_db": -0.006}}
    gains, mean = benchmark.quoted_gains(summary)
    assert gains == {"a": 2.54, "b": 1.0, "c": -0.01}
    assert mean == pytest.approx((2.54 + 1.0 - 0.01) / 3)


def test_eval_command_writes_table_json_and_grids(tmp_path, tiny_model, photo, capsys):
    from PIL import Image

    from spire_rt.cli import main

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.round(photo[:260, :300] * 255).astype(np.uint8)).save(images / "coffee.png")
    model_folder = tiny_model.save(tmp_path / "model")
    out = tmp_path / "out"
    code = main(["eval", "--model", str(model_folder), "--images", str(images), "--out", str(out),
                 "--families", "upsample_2x", "--steps", "1", "--quiet"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["summary"]["upsample_2x"]["images"] == 1
    assert results["options"]["steps"] == 1 and results["mixed_draws"] == 1
    assert (out / "results.md").read_text().count("upsample_2x") == 1
    assert Image.open(out / "grid_upsample_2x.png").size == (4 * 128, 128)

    # A second run into the same folder would replace these results: refused before anything runs, unless asked.
    before = (out / "results.json").read_bytes()
    again = ["eval", "--model", str(model_folder), "--images", str(images), "--out", str(out),
             "--families", "upsample_2x", "--steps", "1", "--quiet"]
    assert main(again) == 2
    assert "already holds results.json, results.md, grid_upsample_2x.png" in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == before
    assert main([*again, "--overwrite"]) == 0


def test_eval_refuses_bad_options_and_images_before_creating_its_out_folder(tmp_path, capsys):
    from spire_rt.cli import main

    assert main(["eval", "--out", str(tmp_path / "bad_option"), "--ensemble", "0", "--quiet"]) == 2
    assert "ensemble must be 1 .. 4" in capsys.readouterr().err
    assert main(["eval", "--out", str(tmp_path / "bad_images"), "--images", str(tmp_path / "none"), "--quiet"]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert not (tmp_path / "bad_option").exists() and not (tmp_path / "bad_images").exists()


def test_heldout_images_are_the_training_holdout():
    from spire_rt.evaluation.cli import HELDOUT_IMAGES, load_images
    from spire_rt.training.data import HELD_OUT

    images = load_images(HELDOUT_IMAGES)
    assert sorted(images) == sorted(HELD_OUT)
    assert all(image.ndim == 3 and image.shape[2] == 3 for image in images.values())


def test_validation_images_are_training_images_only():
    from spire_rt.evaluation.cli import VALIDATION_IMAGES, load_images
    from spire_rt.training.data import HELD_OUT, TRAIN_IMAGES

    images = load_images(VALIDATION_IMAGES)
    assert set(images) <= set(TRAIN_IMAGES) and not set(images) & set(HELD_OUT) and len(images) == 4


def test_noise_estimate_recovers_the_sigma():
    flat = np.full((128, 128, 3), 0.5)
    noisy = flat + 0.05 * np.random.default_rng(0).standard_normal(flat.shape)
    assert benchmark.estimate_noise_sigma(noisy) == pytest.approx(0.05, rel=0.05)


def test_mixed_draws_add_the_next_draws_of_each_photograph(photo):
    """--mixed-draws N: the first draw is the one-draw benchmark's; the others are the next qualifying draws,
    numbered 2 .. N, in both mixed families, with the blind family's input the full prompt's upsampled."""
    one = benchmark.build_cases({"coffee": photo}, families=("mixed", "mixed_blind"))
    three = benchmark.build_cases({"coffee": photo}, families=("mixed", "mixed_blind", "dejpeg_20"), mixed_draws=3)
    mixed = [case for case in three if case.family == "mixed"]
    blind = [case for case in three if case.family == "mixed_blind"]
    assert [(case.image, case.draw) for case in mixed] == [(case.image, case.draw) for case in blind]
    assert [(case.image, case.draw) for case in mixed] == [("coffee", 1), ("coffee", 2), ("coffee", 3)]
    assert np.array_equal(mixed[0].model_input, one[0].model_input) and mixed[0].prompt == one[0].prompt
    assert len({case.prompt for case in mixed}) == 3 and all(case.prompt.count(";") >= 1 for case in mixed)
    for full, blind_case in zip(mixed, blind):
        assert blind_case.prompt == "Remove all degradation"
        assert np.array_equal(blind_case.model_input, full.upsampled)
    assert [case.family for case in three].count("dejpeg_20") == 1
    with pytest.raises(ValueError, match="mixed_draws must be 1 or more"):
        benchmark.build_cases({"coffee": photo}, mixed_draws=0)


def test_eval_refuses_a_bad_mixed_draws_count(tmp_path, capsys):
    from spire_rt.cli import main

    assert main(["eval", "--out", str(tmp_path / "out"), "--mixed-draws", "0", "--quiet"]) == 2
    assert "--mixed-draws must be 1 or more, got 0" in capsys.readouterr().err
    assert main(["eval", "--out", str(tmp_path / "out"), "--sweep", "--mixed-draws", "3", "--quiet"]) == 2
    assert "--mixed-draws applies to the benchmark, not to --sweep" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

"""`spire-rt` end to end: restore, degrade, info, and every bad input ending in one line and exit status 2."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from spire_rt import cli, imageio
from spire_rt.prompts import parse_restoration_prompt


def write_png(path, size=(64, 48), mode="RGB"):
    rng = np.random.default_rng(0)
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (size[1], size[0], channels) if channels else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


def run(argv, capsys):
    status = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(status, err, fragment):
    assert status == 2
    lines = [line for line in err.splitlines() if line.startswith("spire-rt: error:")]
    assert len(lines) == 1, err
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in err


def test_restore_256_end_to_end(tmp_path, capsys):
    source = write_png(tmp_path / "in.png", size=(256, 256))
    started = time.perf_counter()
    status, out, err = run(["restore", source, "-o", tmp_path / "out.png", "--seed", "1", "--quiet"], capsys)
    elapsed = time.perf_counter() - started
    assert status == 0, err
    assert Image.open(tmp_path / "out.png").size == (256, 256)
    assert "seed 1" in out
    print(f"restore 256x256 with the default model: {elapsed:.2f} s")  # for the record, not a timed test


def test_restore_folder_upsample_and_overwrite(tmp_path, capsys):
    folder = tmp_path / "inputs"
    folder.mkdir()
    write_png(folder / "a.png", size=(40, 32))
    write_png(folder / "b.png", size=(24, 24), mode="RGBA")
    options = ["--restore", "upsample to 2x", "--steps", "1", "--seed", "0", "--quiet"]
    status, _, err = run(["restore", folder, "-o", tmp_path / "out", *options], capsys)
    assert status == 0, err
    assert Image.open(tmp_path / "out" / "a.png").size == (80, 64)
    assert Image.open(tmp_path / "out" / "b.png").mode == "RGBA"

    before = (tmp_path / "out" / "a.png").read_bytes()
    status, _, err = run(["restore", folder, "-o", tmp_path / "out", *options], capsys)
    assert_one_line_error(status, err, "already exists")
    assert (tmp_path / "out" / "a.png").read_bytes() == before
    status, _, err = run(["restore", folder, "-o", tmp_path / "out", "--overwrite", *options], capsys)
    assert status == 0, err


def bomb(path):
    write_png(path, size=(64, 64))
    return path


@pytest.mark.parametrize("setup, extra, fragment", [
    (lambda d: d / "missing.png", [], "no such file"),
    (lambda d: (d / "cut.png").write_bytes((write_png(d / "whole.png").read_bytes())[:120]) and d / "cut.png",
     [], "cannot decode"),
    (lambda d: (d / "text.png").write_text("hello") and d / "text.png", [], "not an image"),
    (lambda d: write_png(d / "ok.png"), ["--restore", "Deblur with sigma"], "position"),
    (lambda d: write_png(d / "ok.png"), ["--restore", "Denoise with sigma 0.9"], "outside"),
    (lambda d: write_png(d / "ok.png"), ["--model", "sd99"], "sd99"),
    (lambda d: write_png(d / "ok.png"), ["--steps", "0"], "steps"),
    (lambda d: write_png(d / "ok.png"), ["--device", "cuda"], "cuda"),
])
def test_restore_bad_input(tmp_path, capsys, setup, extra, fragment):
    source = setup(tmp_path)
    status, _, err = run(["restore", source, "-o", tmp_path / "out.png", "--quiet", *extra], capsys)
    assert_one_line_error(status, err, fragment)
    assert not (tmp_path / "out.png").exists()


def test_decompression_bomb_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(imageio, "MAX_INPUT_PIXELS", 1000)
    source = write_png(tmp_path / "big.png", size=(100, 100))
    status, _, err = run(["restore", source, "-o", tmp_path / "out.png"], capsys)
    assert_one_line_error(status, err, "decompression bomb")


def test_output_problems_are_refused_before_work(tmp_path, capsys, monkeypatch):
    source = write_png(tmp_path / "in.png")
    status, _, err = run(["restore", source, "-o", tmp_path / "nowhere" / "out.png"], capsys)
    assert_one_line_error(status, err, "does not exist")
    status, _, err = run(["restore", source, "-o", tmp_path / "out.gif"], capsys)
    assert_one_line_error(status, err, "unknown output format")

    # Running as root, chmod cannot make a folder unwritable for us: stand in for the permission check.
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = imageio.os.access
    monkeypatch.setattr(imageio.os, "access", lambda p, mode: False if str(p) == str(locked) else
                        real_access(p, mode))
    status, _, err = run(["restore", source, "-o", locked / "out.png"], capsys)
    assert_one_line_error(status, err, "not writable")


def test_restore_leaves_unset_options_to_the_model(tmp_path, capsys, monkeypatch):
    """Options not on the command line reach the Restorer unset, so the model's restore_defaults apply."""
    from spire_rt.pipeline import Restorer

    seen = []
    original = Restorer.__call__

    def recording(self, image, progress=None, **options):
        seen.append(options)
        result = original(self, image, progress=progress, **options)
        seen.append(self.last_run.options)
        return result

    monkeypatch.setattr(Restorer, "__call__", recording)
    source = write_png(tmp_path / "in.png", size=(32, 32))
    status, _, err = run(["restore", source, "-o", tmp_path / "out.png", "--steps", "2", "--quiet"], capsys)
    assert status == 0, err
    given, ran = seen
    assert given["steps"] == 2 and "strength" not in given and "sampler" not in given
    defaults = Restorer.from_pretrained().model.restore_defaults
    assert ran.steps == 2 and ran.strength == defaults.get("strength", 1.0)
    assert "ensemble" not in given and ran.ensemble == defaults.get("ensemble", 1)


def test_restore_progress_bar_counts_every_ensemble_member(tmp_path, capsys):
    source = write_png(tmp_path / "in.png", size=(32, 32))
    status, _, err = run(["restore", source, "-o", tmp_path / "out.png", "--backend", "torch", "--steps", "2",
                          "--ensemble", "3"], capsys)
    assert status == 0, err
    assert "0/6" in err  # the bar's total: 2 sampler steps for each of 3 members


def test_restore_threads_reach_the_backend(tmp_path, capsys, monkeypatch):
    from spire_rt import backends

    seen = {}
    original = backends.create_backend

    def recording(name, model, **kwargs):  # records the options, builds the backend without touching threads
        seen.update(kwargs)
        return original(name, model, **{k: v for k, v in kwargs.items() if k != "threads"})

    monkeypatch.setattr("spire_rt.pipeline.create_backend", recording)
    source = write_png(tmp_path / "in.png", size=(32, 32))
    status, _, err = run(["restore", source, "-o", tmp_path / "out.png", "--backend", "torch", "--threads", "1",
                          "--quiet"], capsys)
    assert status == 0, err
    assert seen["threads"] == 1
    status, _, err = run(["restore", source, "-o", tmp_path / "out2.png", "--threads", "0"], capsys)
    assert_one_line_error(status, err, "--threads must be a positive integer")


def test_restore_cache_holds_the_onnxruntime_artifacts(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    source = write_png(tmp_path / "in.png", size=(32, 32))
    cache = tmp_path / "cache"
    status, _, err = run(["restore", source, "-o", tmp_path / "out.png", "--backend", "onnxruntime",
                          "--cache", cache, "--quiet"], capsys)
    assert status == 0, err
    assert list(cache.rglob("*.onnx"))
    status, _, err = run(["restore", source, "-o", tmp_path / "out2.png", "--backend", "torch", "--cache", cache],
                         capsys)
    assert_one_line_error(status, err, "--cache needs --backend onnxruntime")
    assert not (tmp_path / "out2.png").exists()


def test_damaged_checkpoint_folder(tmp_path, capsys):
    from spire_rt.models import build_preset

    folder = build_preset("tiny").save(tmp_path / "model")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    source = write_png(tmp_path / "in.png")
    status, _, err = run(["restore", source, "-o", tmp_path / "out.png", "--model", folder], capsys)
    assert_one_line_error(status, err, "cannot load unet")


def test_untrained_model_warns_once(tmp_path, capsys):
    from spire_rt.models import build_preset

    folder = build_preset("tiny").save(tmp_path / "model")
    source = write_png(tmp_path / "in.png", size=(32, 32))
    status, _, err = run(["restore", source, "-o", tmp_path / "out.png", "--model", folder, "--steps", "1",
                          "--quiet"], capsys)
    assert status == 0
    assert err.count("untrained") == 1


def test_degrade_seeded_and_explicit(tmp_path, capsys):
    source = write_png(tmp_path / "clean.png", size=(96, 80))
    status, out, err = run(["degrade", source, "-o", tmp_path / "d1.png", "--seed", "3"], capsys)
    assert status == 0, err
    parse_restoration_prompt(out.strip())
    first = (tmp_path / "d1.png").read_bytes()
    run(["degrade", source, "-o", tmp_path / "d2.png", "--seed", "3"], capsys)
    assert (tmp_path / "d2.png").read_bytes() == first

    status, out, _ = run(["degrade", source, "-o", tmp_path / "d3.png", "--downscale", "2", "--noise", "0.1"],
                         capsys)
    assert status == 0
    assert out.strip() == "Upsample to 2x; Denoise with sigma 0.10"
    assert Image.open(tmp_path / "d3.png").size == (48, 40)

    status, _, err = run(["degrade", source, "-o", tmp_path / "d4.png", "--seed", "1", "--blur", "2"], capsys)
    assert_one_line_error(status, err, "either")
    status, _, err = run(["degrade", source, "-o", tmp_path / "d5.png", "--jpeg", "0"], capsys)
    assert_one_line_error(status, err, "quality")


def test_info(capsys):
    status, out, _ = run(["info"], capsys)
    assert status == 0
    assert "torch" in out and "backends:" in out and "tiny" in out


def test_real_process_exit_status_and_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "spire_rt.cli", "restore", str(tmp_path / "nope.png"),
                             "-o", str(tmp_path / "out.png")], check=False, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("spire-rt: error:") and "Traceback" not in result.stderr

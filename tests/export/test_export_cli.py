"""`spire-rt export`: export + check, reuse on a second run, one-line errors."""

from __future__ import annotations

import json

from spire_rt.cli import main


def test_export_check_then_reuse(tmp_path, capsys):
    out = tmp_path / "onnx"
    argv = ["export", "--model", "tiny", "--out", str(out), "--size", "32x32", "--networks",
            "text_encoder,vae_decoder", "--check", "--seed", "3"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "exporting text_encoder" in first and "check passed" in first
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["artifacts"]) == ["text_encoder", "vae_decoder"]
    assert manifest["key"]["profile"]["min_size"] == [32, 32]
    assert main(argv[:-3]) == 0
    assert "exporting" not in capsys.readouterr().out


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    assert main(["export", "--model", "tiny", "--out", str(tmp_path), "--size", "30x30"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("spire-rt: error: image sides must be positive multiples of") and error.count("\n") == 1
    assert main(["export", "--model", "tiny", "--out", str(tmp_path), "--networks", "vae"]) == 2
    assert "unknown network" in capsys.readouterr().err

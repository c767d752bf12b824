"""`spire-rt bench` on a tiny run: every stage for both backends, the JSON's fields, the PNG chart."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from spire_rt.bench.runner import BenchConfig, parse_backend
from spire_rt.cli import main
from spire_rt.errors import OptionError


def test_bench_writes_json_and_chart(tmp_path, capsys):
    result_path, chart_path = tmp_path / "bench.json", tmp_path / "bench.png"
    stages = ["text_encoder", "denoiser_guided", "end_to_end"]  # end to end runs the VAE graphs too
    argv = ["bench", "--model", "tiny", "--size", "32x32", "--steps", "1", "--repeats", "2", "--threads", "1",
            "--stages", ",".join(stages), "--cache", str(tmp_path / "cache"), "--json", str(result_path),
            "--plot", str(chart_path), "--note", "test run"]
    assert main(argv) == 0
    assert "end_to_end" in capsys.readouterr().out
    result = json.loads(result_path.read_text())
    assert list(result["stages"]) == stages and result["machine"]["torch_threads"] == 1
    for stage, entry in result["stages"].items():
        torch_stats, ort_stats = entry["backends"]["torch"], entry["backends"]["onnxruntime"]
        assert torch_stats["speedup_vs_torch"] == 1.0 and len(ort_stats["samples_s"]) == 2
        assert ort_stats["p25_s"] <= ort_stats["median_s"] <= ort_stats["p75_s"]
        assert ort_stats["speedup_vs_torch"] == pytest.approx(torch_stats["median_s"] / ort_stats["median_s"])
        if stage != "end_to_end":
            assert entry["gflop"] > 0
            assert torch_stats["rel_err_vs_torch"] == 0 and ort_stats["rel_err_vs_torch"] < 1e-4
    end = result["stages"]["end_to_end"]["backends"]["onnxruntime"]
    assert end["images_per_s"] > 0 and (end["psnr_vs_torch_db"] is None or end["psnr_vs_torch_db"] >= 40)
    assert result["machine"]["logical_cores"] >= 1 and result["machine"]["cpu"]
    assert "other_processes_cpu_cores" in result["load"] and result["note"] == "test run"
    with Image.open(chart_path) as chart:
        assert chart.format == "PNG" and chart.size[0] == 1000


def test_bench_end_to_end_with_the_model_defaults(tmp_path):
    from spire_rt.models.spire_model import load_model

    result_path = tmp_path / "bench.json"
    argv = ["bench", "--model", "tiny", "--size", "32x32", "--repeats", "1", "--backends", "torch", "--stages",
            "end_to_end", "--model-defaults", "--json", str(result_path)]
    assert main(argv) == 0
    entry = json.loads(result_path.read_text())["stages"]["end_to_end"]
    defaults = load_model("tiny").restore_defaults
    assert defaults and "default sampling" in entry["what"]
    assert {key: entry["options"][key] for key in defaults} == defaults  # not --steps 4 and guidance 4
    assert entry["options"]["prompt"] == ""  # as `spire-rt restore` without --prompt: no semantic guidance


def test_backend_specs():
    assert parse_backend("onnxruntime:quantize=int8:threads=2") == ("onnxruntime", {"quantize": "int8",
                                                                                   "threads": 2})
    with pytest.raises(OptionError, match="unknown backend"):
        parse_backend("tvm")
    with pytest.raises(OptionError, match="key=value"):
        parse_backend("onnxruntime:int8")
    with pytest.raises(OptionError, match="first backend must be plain 'torch'"):
        BenchConfig(backends=("onnxruntime", "torch")).validated()

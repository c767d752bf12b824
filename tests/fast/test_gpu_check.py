"""bench/gpu_check.py's logic, in its --smoke mode (tiny preset, tiny shapes, one kernel case, no tests)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the full run of bench/gpu_check.py is the check")
def test_smoke_run_writes_every_section(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    assert gpu_check.main(["--smoke", "--out", str(tmp_path), "--tests", "none", "--kernels", "modulate",
                           "--iters", "1"]) == 0
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert not results["errors"], results["errors"]
    assert results["env"]["gpu"] is None and results["roofline"]["copy_gbps"] > 0
    assert [k["name"] for k in results["kernels"]] == ["modulate 64x64 320"]
    assert results["kernels"][0]["rel_err_vs_eager"] < 1e-2
    assert set(results["step"]) == {"eager_fp32", "fast_fp32", "fast_fp32_one_stream"}
    assert results["step"]["fast_fp32"]["backend"]["kernels"] == "reference"
    assert results["step"]["fast_fp32"]["backend"]["overlap"] is True
    assert results["step"]["fast_fp32_one_stream"]["backend"]["overlap"] is False
    assert set(results["e2e"]) == {"eager_fp32", "fast_fp32", "fast_fp32_one_stream", "fp32_reference"}
    assert results["psnr_db"]["fast_fp32"] > 35 and results["psnr_db"]["fast_fp32_one_stream"] > 35
    assert results["profile"]["kernel_ms_per_step"] > 0 and results["profile"]["top"]
    assert "step_x_flop_floor <= 4" in results["targets"]
    assert "SMOKE RUN" in (tmp_path / "gpu_check.log").read_text()
    assert "targets:" in capsys.readouterr().out


def test_an_earlier_run_is_never_overwritten(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    (tmp_path / "gpu_check.json").write_text("{}")
    assert gpu_check.main(["--smoke", "--out", str(tmp_path), "--tests", "none"]) == 2
    assert "already holds gpu_check.json" in capsys.readouterr().err
    assert (tmp_path / "gpu_check.json").read_text() == "{}" and not (tmp_path / "gpu_check.log").exists()

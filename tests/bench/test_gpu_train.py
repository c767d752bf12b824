"""bench/gpu_train.sh: one device call that trains (from scratch, or on from a shipped model), scores and packs.
A stand-in for the CLI plays each stage (writing what the real one would: logs, a shipped folder, eval's results),
so the test checks the script's own work in seconds: the chain's options, the time limit, which model it scores,
and what comes back in OUT."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_train.sh"

STAND_IN = '''
import json, os, sys, time
from pathlib import Path
args = sys.argv[1:]
with open(os.environ["CALLS"], "a") as calls:
    calls.write(" ".join(args) + "\\n")
def value(flag):
    return args[args.index(flag) + 1]
if args[0] == "train":
    stage, run = value("--stage"), Path(value("--out"))
    run.mkdir(parents=True, exist_ok=True)
    if stage == os.environ.get("SLOW_STAGE") or (stage == "ship" and os.environ.get("SLOW_LAST_SHIP")
                                                 and (run / "decoder.jsonl").exists()):
        time.sleep(60)
    if stage == os.environ.get("FAILING_STAGE"):
        sys.exit("stage failed")
    if stage == "unpack":
        (run / "model").mkdir()
    elif stage == "ship":
        target = Path(value("--ship-to"))
        target.mkdir(parents=True)
        (target / "spire.json").write_text(json.dumps({"from": str(run / "model")}))
    else:
        if stage == "decoder":  # the decoder leg writes its decoder and branch into the run folder
            for part in ("vae", "fidelity"):
                (run / part).mkdir(exist_ok=True)
                (run / part / "config.json").write_text("{}")
        with open(run / f"{stage}.jsonl", "a") as log:
            log.write(json.dumps({"stage": stage, "step": 1}) + "\\n")
        print(json.dumps({"stage": stage, "step": 1, "final": True}))
elif args[0] == "eval":
    out = Path(value("--out"))
    out.mkdir(parents=True)
    summary = {family: {"model_gain_db": gain} for family, gain in json.loads(os.environ["GAINS"]).items()}
    (out / "results.json").write_text(json.dumps({"summary": summary, "model": value("--model")}))
    (out / "results.md").write_text("# spire-rt eval\\n")
'''
GAINS = {"denoise_0.10": 8.0, "deblur_2.0": 2.0, "dejpeg_20": 1.0, "upsample_2x": 0.5, "mixed": 1.5,
         "mixed_blind": 1.0}


def device_call(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    stand_in = tmp_path / "stand_in.py"
    stand_in.write_text(STAND_IN)
    calls = tmp_path / "calls.txt"
    calls.touch()
    variables = {**os.environ, "SPIRE_RT": f"{sys.executable} {stand_in}", "CALLS": str(calls),
                 "GAINS": json.dumps(GAINS), "OUT": str(tmp_path / "out"), "RUN": str(tmp_path / "run"),
                 "DEVICE": "cpu", **env}
    result = subprocess.run(["bash", str(SCRIPT), "tiny"], env=variables, capture_output=True, text=True,
                            timeout=120, check=False)
    return result, calls.read_text().splitlines()


def unpacked(out: Path) -> dict[str, bytes]:
    parts = sorted(out.glob("run.tar.*"))
    assert parts
    with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts))) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_trains_scores_the_final_model_and_packs_it(tmp_path):
    result, calls = device_call(tmp_path)
    assert result.returncode == 0, result.stderr
    stages = [call.split("--stage ")[1].split()[0] for call in calls if call.startswith("train")]
    assert stages == ["vae", "prior", "adaptor", "adaptor", "ship", "decoder", "ship"]
    trains = [call for call in calls if call.startswith("train") and "--stage ship" not in call]
    assert all("--precision bf16" in call and "--preset tiny " in call and "--workers 14" in call for call in trains)
    one_step = [call for call in trains if "--strength" in call]
    assert len(one_step) == 1 and "--rank-rate 0.5" in one_step[0]
    evals = [call for call in calls if call.startswith("eval")]
    expected = (f"eval --model {tmp_path / 'run' / 'ship'} --images skimage-validation --device cpu "
                f"--out {tmp_path / 'run' / 'validation'} --quiet")
    assert evals == [expected]
    out = tmp_path / "out"
    assert len(list(out.iterdir())) <= 8  # what the device returns
    assert (out / "validation.md").read_text() == "# spire-rt eval\n"
    assert "preset tiny" in (out / "versions.txt").read_text()
    assert "chain: exit status 0" in (out / "chain.log").read_text()
    files = unpacked(out)
    assert {"ship/spire.json", "ship_adaptor/spire.json", "./adaptor.jsonl", "./decoder.jsonl",
            "validation/results.json"} <= set(files)
    assert "| dejpeg_20 | +1.00 |" in result.stdout
    assert result.stdout.strip().endswith("| mean | 2.333 |")


def test_from_carries_a_shipped_model_on_with_its_own_defaults(tmp_path):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "spire.json").write_text(json.dumps({"name": "tiny-wide",
                                                    "restore_defaults": {"strength": 0.05, "ensemble": 2}}))
    result, calls = device_call(tmp_path, FROM=str(shipped))
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    trains = [call for call in calls if call.startswith("train")]
    assert [call.split("--stage ")[1].split()[0] for call in trains] == ["unpack", "adaptor", "ship", "decoder", "ship"]
    assert trains[0] == f"train --stage unpack --from {shipped} --out {run}"
    adaptor, decoder = trains[1], trains[3]
    for option in ("--resume", "--batch 128", "--strength 0.04 0.08", "--loss-space pixel", "--rank-rate 0.5",
                   "--lr 2e-4", "--train-unet", "--minutes 4.0", "--preset tiny-wide", "--workers 14",
                   "--precision bf16"):
        assert option in adaptor, option
    for option in ("--batch 64", "--landing-rate 1 ", "--fidelity", "--lr 2.5e-4", "--minutes 1.2",
                   "--preset tiny-wide"):
        assert option in decoder, option
    assert all(call.endswith("--default-strength 0.05 --default-ensemble 2") for call in (trains[2], trains[4]))
    assert f"--model {run / 'ship'} " in next(c for c in calls if c.startswith("eval"))
    assert f"from {shipped}, MINUTES 4.0 1.2" in (tmp_path / "out" / "versions.txt").read_text()
    assert {"ship/spire.json", "ship_adaptor/spire.json", "./adaptor.jsonl", "./decoder.jsonl"} <= set(
        unpacked(tmp_path / "out"))


def test_from_must_name_a_model_folder(tmp_path):
    result, calls = device_call(tmp_path, FROM=str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "is not a model folder (no spire.json)" in result.stderr
    assert not calls and not (tmp_path / "out").exists()


def test_a_chain_stopped_after_the_adaptor_scores_its_ship_adaptor(tmp_path):
    result, calls = device_call(tmp_path, FAILING_STAGE="decoder")
    assert result.returncode == 0, result.stderr
    assert "chain: exit status 1" in (tmp_path / "out" / "chain.log").read_text()
    assert f"--model {tmp_path / 'run' / 'ship_adaptor'} " in next(c for c in calls if c.startswith("eval"))


def test_a_decoder_leg_cut_off_before_its_ship_comes_back_to_be_shipped_here(tmp_path):
    result, calls = device_call(tmp_path, SLOW_LAST_SHIP="1", TRAIN_S="8")
    assert result.returncode == 0, result.stderr
    chain = (tmp_path / "out" / "chain.log").read_text()
    assert "chain: exit status 124" in chain and "the decoder leg was not shipped" in chain
    assert f"--model {tmp_path / 'run' / 'ship_adaptor'} " in next(c for c in calls if c.startswith("eval"))
    files = unpacked(tmp_path / "out")
    assert {"ship_adaptor/spire.json", "vae/config.json", "fidelity/config.json", "./decoder.jsonl"} <= set(files)
    assert not any(name.startswith("ship/") for name in files)


def test_a_chain_stopped_after_the_adaptor_packs_no_run_weights(tmp_path):
    result, _ = device_call(tmp_path, FAILING_STAGE="decoder")
    assert result.returncode == 0, result.stderr
    assert not any(name.startswith(("vae/", "model/")) for name in unpacked(tmp_path / "out"))


def test_a_chain_cut_off_before_any_model_says_so(tmp_path):
    result, calls = device_call(tmp_path, SLOW_STAGE="prior", TRAIN_S="3")
    assert result.returncode == 1
    assert "chain: exit status 124" in result.stdout
    assert "no shipped model" in result.stdout
    assert not any(call.startswith("eval") for call in calls)


def test_refuses_a_named_run_folder_that_exists_and_an_out_with_earlier_results(tmp_path):
    kept = tmp_path / "mine"
    kept.mkdir()
    (kept / "precious.txt").write_text("keep")
    result, calls = device_call(tmp_path, RUN=str(kept))
    assert result.returncode == 2 and f"RUN={kept} already exists" in result.stderr
    assert (kept / "precious.txt").read_text() == "keep" and not calls
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.tar.aa").write_text("an earlier call's part")
    result, calls = device_call(tmp_path)
    assert result.returncode == 2 and "already holds an earlier call's run.tar.aa" in result.stderr
    assert (out / "run.tar.aa").read_text() == "an earlier call's part" and not calls


def test_needs_out(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    result = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "set OUT to the folder the device returns" in result.stderr


@pytest.fixture(autouse=True)
def _no_leftover_sleepers():
    yield
    subprocess.run(["pkill", "-f", "stand_in.py train --stage prior"], check=False)

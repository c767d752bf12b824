"""A run folder for CPU legs on a shipped candidate, made from its fp16 weights.

    python make_cpu_run.py CANDIDATE RUN

RUN gets fp32 vae/, unet/ and text_encoder/ folders and an adaptor.ckpt whose modules are the candidate's (with a
fresh optimiser), so `spire-rt train --stage adaptor --out RUN --resume --strength 0.04 0.08 ...` carries it on.
"""

import sys
import time
from pathlib import Path

import torch

from spire_rt.models.presets import get_preset
from spire_rt.models.spire_model import load_model
from spire_rt.training import recipe

candidate, run = Path(sys.argv[1]), Path(sys.argv[2])
model = load_model(candidate)
run.mkdir(parents=True, exist_ok=True)
for part in ("vae", "unet", "text_encoder"):
    getattr(model, part).save_pretrained(run / part, safe_serialization=True)
config = recipe.StageConfig(stage="adaptor", out=run, steps=1, batch=8, crop=64, lr=1e-4, strength=(0.04, 0.08),
                            start_noise=0.0, loss_space="pixel", single_rate=0.5, eval_minutes=0, quiet=True)
stage = recipe.AdaptorStage(config, get_preset(model.name), torch.device("cpu"))
stage.adaptor.load_state_dict(model.controlnet.state_dict())
stage.text_encoder.load_state_dict(model.text_encoder.state_dict())
stage.save_checkpoint(time.perf_counter())  # writes RUN/adaptor.ckpt and exports RUN/model
exported = load_model(run / "model")
assert all(torch.equal(a, b) for a, b in zip(exported.controlnet.parameters(), model.controlnet.parameters()))
print("run folder ready:", run)

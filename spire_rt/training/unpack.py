"""`spire-rt train --stage unpack`: a shipped SPIRE model made back into a run folder the recipe can carry on.

Shipping (ship.py) keeps fp16 weights only, and the run folder a model came from (fp32 weights, optimiser state)
rarely outlives the machine that trained it. Unpacking writes what the adaptor and decoder stages read:

    RUN/vae, RUN/unet, RUN/text_encoder   the model's parts, fp32 (and RUN/fidelity, where it has a branch)
    RUN/adaptor.ckpt, RUN/model           its adaptor at step 0, with a fresh optimiser

so `--stage adaptor --resume --strength LO HI` and `--stage decoder` continue the model instead of starting over
(on a GPU, with batches a CPU could not afford).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import SpireError
from ..models.deepen import deepened
from ..models.presets import PRESETS
from ..models.spire_model import load_model, shipped_folder

# What a run folder holds once any stage has written to it: unpacking never writes over a run.
RUN_CONTENTS = ("vae", "unet", "text_encoder", "fidelity", "model", "vae.ckpt", "prior.ckpt", "adaptor.ckpt",
                "decoder.ckpt")


def unpack_model(source: str | Path, run: Path, deepen_levels: Sequence[int] = (), seed: int = 0) -> str:
    """Unpack the model `source` (a folder, or a preset name for its shipped weights) into `run`; returns the
    preset its later stages must be given (--preset). `deepen_levels`: UNet levels to give one more resnet each
    (models/deepen.py), the output unchanged, for the adaptor stage's --train-unet to put to use; `seed` draws
    the new layers' starting weights (those the identity leaves free)."""
    from .recipe import AdaptorStage, StageConfig

    run = Path(run)
    held = [name for name in RUN_CONTENTS if (run / name).exists()]
    if held:
        raise SpireError(f"--stage unpack: {run} already holds a run ({', '.join(held)}); unpack into a new folder")
    if not Path(source).exists() and str(source) in PRESETS and shipped_folder(str(source)) is None:
        # load_model would build the preset's untrained network first (gigabytes for sd15) only to be refused
        raise SpireError(f"--stage unpack: preset {source!r} ships no weights; give a model folder")
    model = load_model(source)
    if model.name not in PRESETS:
        raise SpireError(f"--stage unpack: {source} is model {model.name!r}, which is no training preset "
                         f"({', '.join(sorted(PRESETS))}); the recipe continues its own presets only")
    if not model.trained:
        raise SpireError(f"--stage unpack: {source} holds untrained weights; train it from scratch instead")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for level in deepen_levels:
            model.unet, model.controlnet = deepened(model.unet, model.controlnet, level)
    run.mkdir(parents=True, exist_ok=True)
    for part in ("vae", "unet", "text_encoder", "fidelity"):
        if getattr(model, part) is not None:
            getattr(model, part).to(torch.float32).save_pretrained(run / part, safe_serialization=True)
    # A one-step model's checkpoint records its strength, so that a resume without --strength is refused
    # instead of falling back to the diffusion loss.
    defaults = model.restore_defaults
    one_step = defaults.get("steps") == 1 and "strength" in defaults
    config = StageConfig(stage="adaptor", out=run, steps=0, batch=1, crop=64, lr=0.0, eval_minutes=0, quiet=True,
                         leaves=0, strength=(defaults["strength"],) * 2 if one_step else None,
                         start_noise=defaults.get("start_noise", 1.0) if one_step else 1.0)
    stage = AdaptorStage(config, PRESETS[model.name], torch.device("cpu"))
    stage.adaptor.load_state_dict(model.controlnet.state_dict())
    stage.save_checkpoint(time.perf_counter())  # RUN/adaptor.ckpt, and RUN/model through export()
    return model.name

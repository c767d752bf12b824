"""Leg (w)'s probe trained the adaptor, text encoder and UNet in one optimiser group; `--train-unet` keeps the UNet
in a second group (recipe.AdaptorStage.param_groups). This splits RUN/adaptor.ckpt's group so that the recipe's
own `--resume --train-unet` carries the probe's optimiser state on (same parameters, same order).

    python split_probe_checkpoint.py RUN
"""

import sys
from pathlib import Path

import torch

from spire_rt.models.spire_model import load_component

run = Path(sys.argv[1])
path = run / "adaptor.ckpt"
state = torch.load(path, map_location="cpu", weights_only=False)
groups = state["optimizer"]["param_groups"]
unet_count = len(list(load_component(run / "unet", "unet").parameters()))
assert len(groups) == 1 and "unet" in state["modules"], "not the probe's one-group checkpoint"
ids = groups[0]["params"]
state["optimizer"]["param_groups"] = [{**groups[0], "params": ids[:-unet_count]},
                                      {**groups[0], "params": ids[-unet_count:]}]
torch.save(state, path.with_suffix(".ckpt.partial"))
path.with_suffix(".ckpt.partial").replace(path)
print(f"{path}: {len(ids) - unet_count} + {unet_count} parameters in two groups")

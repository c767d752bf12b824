"""Probe leg (w): the adaptor stage with the UNet trained too (same lr), before building it into the recipe."""
import sys

import torch

from spire_rt.cli import main
from spire_rt.training import recipe

original_build = recipe.AdaptorStage.build


def build(self):
    original_build(self)
    self.unet.requires_grad_(True)


def load_checkpoint(self):
    state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
    for name, module in self.trainable().items():
        if name in state["modules"]:
            module.load_state_dict(state["modules"][name])
    if "unet" in state["modules"]:
        self.optimizer.load_state_dict(state["optimizer"])
    else:
        assert not state["optimizer"]["state"], "expected unpack's fresh optimiser"
    self.rng.bit_generator.state = state["numpy_rng"]
    torch.set_rng_state(state["torch_rng"])
    self.step = state["step"]
    self.elapsed_before = state["elapsed_s"]


recipe.AdaptorStage.build = build
recipe.AdaptorStage.load_checkpoint = load_checkpoint
recipe.AdaptorStage.trainable = lambda self: {"adaptor": self.adaptor, "text_encoder": self.text_encoder,
                                               "unet": self.unet}
recipe.AdaptorStage.parameters = lambda self: (list(self.adaptor.parameters()) + list(self.text_encoder.parameters())
                                               + list(self.unet.parameters()))
sys.exit(main(sys.argv[1:]))
